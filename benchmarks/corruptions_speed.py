"""Images/s of each `timm_rspc.corruptions` corruption (a batch of 16 at 224 px) against the reference
implementation (imagenet_c 0.0.3, one image at a time), on the CPU with one thread, severity 3.

    OMP_NUM_THREADS=1 python benchmarks/corruptions_speed.py
"""
import os
import sys
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
import numpy as np, torch
import test_corruptions_reference as T
from timm_rspc.corruptions import CORRUPTIONS, corrupt
torch.set_num_threads(1)
ref = T.reference.__wrapped__(); views, batch = T.photos.__wrapped__()
batch16 = batch.repeat(6, 1, 1, 1)[:16]
ref.namespace['np'] = T.NumpyWith(np.random.RandomState(0))
import tempfile as _tempfile
from pathlib import Path
ref.namespace['resource_filename'] = T.frost_photos_loader(Path(_tempfile.mkdtemp()))
import io as _io; ref.namespace['BytesIO'] = _io.BytesIO
ref.namespace['sk'] = types.SimpleNamespace(color=T.skimage.color, util=types.SimpleNamespace(
    random_noise=lambda *a, **k: T.skimage.util.random_noise(*a, rng=np.random.default_rng(0), **k)))
def rate(fn, n, reps):
    fn(); start = time.perf_counter()
    for _ in range(reps): fn()
    return n * reps / (time.perf_counter() - start)
print('| corruption | torch img/s (B=16) | reference img/s | speed-up |\n|---|---|---|---|')
for name in CORRUPTIONS:
    g = torch.Generator().manual_seed(0)
    ours = rate(lambda: corrupt(name, batch16, 3, g), 16, 3)
    reference = rate(lambda: getattr(ref, name)(views[0], 3), 1, 5)
    print(f'| {name} | {ours:.0f} | {reference:.0f} | {ours / reference:.1f}x |')
