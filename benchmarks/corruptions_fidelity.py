"""How far `timm_rspc.corruptions` is from the reference implementation, in grey levels on 8-bit output.

    OMP_NUM_THREADS=1 python benchmarks/corruptions_fidelity.py [GIT_REV]

Runs the reference functions of `imagenet_c` 0.0.3 (hendrycks/robustness's corruptions.py, fetched by the reference
test's helpers with pip and cached) on scikit-image's astronaut, chelsea and coffee (ImageNet-C's Resize(256) +
CenterCrop(224)), severities 1-5, and prints: max / mean absolute differences of the deterministic corruptions for
the torch code at GIT_REV (default 163ec1b, the analysis' seven corruptions before they were made exact; run from
the repository root) and now; the same for fog, frost and elastic_transform given the same random draws; KS
distances and correlation differences of the random ones. README's corruption table quotes it.
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
import types

import numpy as np, torch
from _pytest.monkeypatch import MonkeyPatch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
import test_corruptions_reference as T

rev = sys.argv[1] if len(sys.argv) > 1 else '163ec1b'
src = subprocess.run(['git', 'show', f'{rev}:timm_rspc/analysis/corruptions.py'], capture_output=True, text=True,
                     check=True).stdout
path = tempfile.mktemp(suffix='.py'); open(path, 'w').write(src)
spec = importlib.util.spec_from_file_location('before', path); before = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before)
import timm_rspc.corruptions as after

ref = T.reference.__wrapped__()
views, batch = T.photos.__wrapped__()
clean = np.stack([np.asarray(v) for v in views]).astype(np.int16)

def stat(diff):
    return f'{diff.max()} / {diff.mean():.3f}'

print('| corruption | severity | before: max / mean | after: max / mean |\n|---|---|---|---|')
for name in T.EXACT:
    for severity in range(1, 6):
        expected = np.stack([T.reference_uint8(getattr(ref, name), v, severity) for v in views]).astype(np.int16)
        cells = [stat(np.abs(expected - T.to_uint8(mod.corrupt(name, batch, severity)).astype(np.int16)))
                 if name in mod.CORRUPTIONS else 'new' for mod in (before, after)]
        print(f'| {name} | {severity} | {cells[0]} | {cells[1]} |')

mp = MonkeyPatch()
from timm_rspc.corruptions.imagenet_c import _frost_draws
from timm_rspc.corruptions.reference_data import frost_images
import tempfile as _tempfile
from pathlib import Path
ref.namespace['resource_filename'] = T.frost_photos_loader(Path(_tempfile.mkdtemp()))
_, sizes = frost_images()

def same_draws(name, severity):
    g = torch.Generator().manual_seed(severity)
    if name == 'fog':
        draws = T.plasma_draws(len(views), 256, seed=severity)
        per_image = [dict(uniform=T.replayed_uniform([d[i] for d in draws])) for i in range(len(views))]
    elif name == 'elastic_transform':
        pts = torch.rand((len(views), 3, 2), generator=g).double().numpy()
        fields = torch.rand((len(views), 2, 224, 224), generator=g).double().numpy()
        per_image = [dict(uniform=T.replayed_uniform([pts[i], fields[i, 0], fields[i, 1]])) for i in range(len(views))]
    else:
        index, top, left = _frost_draws(len(views), 224, 224, sizes, g, 'cpu')
        per_image = []
        for i in range(len(views)):
            it = iter([int(index[i]), int(top[i]), int(left[i])])
            per_image.append(dict(randint=lambda *a, it=it, **k: next(it)))
    expected = []
    for i, v in enumerate(views):
        mp.setitem(ref.namespace, 'np', T.NumpyWith(types.SimpleNamespace(**per_image[i])))
        expected.append(T.reference_uint8(getattr(ref, name), v, severity))
    mp.undo()
    ours = T.to_uint8(after.corrupt(name, batch, severity, torch.Generator().manual_seed(severity))).astype(np.int16)
    return np.abs(np.stack(expected).astype(np.int16) - ours)

for name in ('fog', 'frost', 'elastic_transform'):
    for severity in range(1, 6):
        before_cell = 'not comparable' if name == 'fog' else 'new'
        print(f'| {name} (same draws) | {severity} | {before_cell} | {stat(same_draws(name, severity))} |')

print('\n| corruption | severity | KS (all values) / critical | max KS per clean-level quarter / critical | max |corr diff| |')
print('|---|---|---|---|---|')
for name in T.RANDOM:
    rng = np.random.default_rng(0)
    mp.setitem(ref.namespace, 'np', T.NumpyWith(rng))
    mp.setitem(ref.namespace, 'sk', types.SimpleNamespace(color=T.skimage.color, util=types.SimpleNamespace(
        random_noise=lambda *a, **k: T.skimage.util.random_noise(*a, rng=rng, **k))))
    for severity in range(1, 6):
        expected = np.stack([T.reference_uint8(getattr(ref, name), v, severity) for v in views]) - clean
        ours = T.to_uint8(after.corrupt(name, batch, severity, torch.Generator().manual_seed(severity))) - clean
        n = clean.size
        ks = T.ks_distance(expected, ours)
        quarters = []
        for low in range(0, 256, 64):
            w = (clean >= low) & (clean < low + 64)
            if w.sum() >= 1000:
                quarters.append((T.ks_distance(expected[w], ours[w]), T.ks_critical(w.sum(), w.sum())))
        worst = max(quarters, key=lambda q: q[0] / q[1])
        corr = np.abs(T.correlations(expected.astype(float)) - T.correlations(ours.astype(float))).max()
        print(f'| {name} | {severity} | {ks:.4f} / {T.ks_critical(n, n):.4f} | {worst[0]:.4f} / {worst[1]:.4f} | '
              f'{corr:.4f} (bound {6 * np.sqrt(2 / clean[..., 0].size):.4f}) |')
    mp.undo()
