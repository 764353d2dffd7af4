"""How far `timm_rspc.corruptions` is from the reference implementation, in grey levels on 8-bit output.

    OMP_NUM_THREADS=1 python benchmarks/corruptions_fidelity.py [GIT_REV]

Runs the reference functions of `imagenet_c` 0.0.3 (hendrycks/robustness's corruptions.py, fetched by the reference
test's helpers with pip and cached) on scikit-image's astronaut, chelsea and coffee (ImageNet-C's Resize(256) +
CenterCrop(224)), severities 1-5, and prints three tables:

1. the deterministic corruptions: max / mean absolute differences for the torch code at GIT_REV (default 163ec1b, the
   analysis' seven corruptions before they were made exact; read with ``git show``, so run it from the repository
   root) and for the code now;
2. fog, frost and elastic_transform given the same random draws (the reference's ``np.random`` calls receive the
   torch function's draws, as the reference test does);
3. the random noises: two-sample KS distances of the corrupted-minus-clean values (all, and the worst quarter of the
   clean grey levels) and the largest difference of the channel / neighbour correlations.

README's corruption table and /work/notes/corruptions.md quote it.
"""
import argparse
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / 'tests'))   # the reference test's helpers: the reference, the photos, statistics
import test_corruptions_reference as reference_test  # noqa: E402

import timm_rspc.corruptions as current  # noqa: E402
from timm_rspc.corruptions.imagenet_c import _frost_draws  # noqa: E402
from timm_rspc.corruptions.reference_data import frost_images  # noqa: E402

SAME_DRAWS = ('fog', 'frost', 'elastic_transform')


def module_at(revision: str, folder: Path):
    """The analysis' corruption module (``timm_rspc/analysis/corruptions.py``) as it was at ``revision``."""
    source = subprocess.run(['git', 'show', f'{revision}:timm_rspc/analysis/corruptions.py'], capture_output=True,
                            text=True, check=True, cwd=REPO_ROOT).stdout
    path = folder / 'corruptions_before.py'
    path.write_text(source)
    spec = importlib.util.spec_from_file_location('corruptions_before', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_mean(differences: np.ndarray) -> str:
    return f'{differences.max()} / {differences.mean():.3f}'


def absolute_differences(expected: np.ndarray, ours: np.ndarray) -> np.ndarray:
    return np.abs(expected.astype(np.int16) - ours.astype(np.int16))


class Reference:
    """The reference's functions, with its ``np.random`` (and scikit-image's ``random_noise``) swapped per call."""

    def __init__(self, folder: Path):
        self.functions = reference_test.reference.__wrapped__()
        self.namespace = self.functions.namespace
        self.namespace['resource_filename'] = reference_test.frost_photos_loader(folder)

    def run(self, name: str, view, severity: int, random=None) -> np.ndarray:
        """The reference's 8-bit result for one image; ``random`` stands in for ``numpy.random`` if given."""
        saved = dict(self.namespace)
        try:
            if random is not None:
                self.namespace['np'] = reference_test.NumpyWith(random)
            return reference_test.reference_uint8(getattr(self.functions, name), view, severity)
        finally:
            self.namespace.clear()
            self.namespace.update(saved)

    def run_with_noise_generator(self, name: str, view, severity: int, rng: np.random.Generator) -> np.ndarray:
        """A random noise with its draws from ``rng`` (numpy's and scikit-image's alike)."""
        saved = dict(self.namespace)
        try:
            self.namespace['np'] = reference_test.NumpyWith(rng)
            self.namespace['sk'] = types.SimpleNamespace(color=reference_test.skimage.color, util=types.SimpleNamespace(
                random_noise=lambda *args, **kwargs: reference_test.skimage.util.random_noise(*args, rng=rng,
                                                                                            **kwargs)))
            return reference_test.reference_uint8(getattr(self.functions, name), view, severity)
        finally:
            self.namespace.clear()
            self.namespace.update(saved)


def same_draw_randoms(name: str, severity: int, batch: int, height: int, width: int):
    """Per image, what replaces the reference's ``np.random``: the draws ``corrupt(name, ..., severity,
    torch.Generator().manual_seed(severity))`` makes, in the reference's order."""
    generator = torch.Generator().manual_seed(severity)
    if name == 'fog':
        draws = reference_test.plasma_draws(batch, 256, seed=severity)
        return [types.SimpleNamespace(uniform=reference_test.replayed_uniform([d[i] for d in draws]))
                for i in range(batch)]
    if name == 'elastic_transform':
        points = torch.rand((batch, 3, 2), generator=generator).double().numpy()
        fields = torch.rand((batch, 2, height, width), generator=generator).double().numpy()
        return [types.SimpleNamespace(uniform=reference_test.replayed_uniform([points[i], fields[i, 0], fields[i, 1]]))
                for i in range(batch)]
    _, sizes = frost_images()
    index, top, left = _frost_draws(batch, height, width, sizes, generator, 'cpu')

    def replayed_randint(values):
        values = iter(values)
        return lambda *args, **kwargs: next(values)
    return [types.SimpleNamespace(randint=replayed_randint([int(index[i]), int(top[i]), int(left[i])]))
            for i in range(batch)]


def deterministic_table(reference: Reference, before, views, batch) -> None:
    print('| corruption | severity | before: max / mean | after: max / mean |\n|---|---|---|---|')
    for name in reference_test.EXACT:
        for severity in range(1, 6):
            expected = np.stack([reference.run(name, view, severity) for view in views])
            cells = [max_mean(absolute_differences(expected, reference_test.to_uint8(module.corrupt(
                name, batch, severity)))) if name in module.CORRUPTIONS else 'new' for module in (before, current)]
            print(f'| {name} | {severity} | {cells[0]} | {cells[1]} |')


def same_draws_table(reference: Reference, views, batch) -> None:
    height, width = batch.shape[-2:]
    for name in SAME_DRAWS:
        for severity in range(1, 6):
            randoms = same_draw_randoms(name, severity, len(views), height, width)
            expected = np.stack([reference.run(name, view, severity, random) for view, random in zip(views, randoms)])
            ours = reference_test.to_uint8(current.corrupt(name, batch, severity,
                                                           torch.Generator().manual_seed(severity)))
            before_cell = 'not comparable' if name == 'fog' else 'new'
            print(f'| {name} (same draws) | {severity} | {before_cell} | '
                  f'{max_mean(absolute_differences(expected, ours))} |')


def random_table(reference: Reference, views, batch) -> None:
    clean = np.stack([np.asarray(view) for view in views]).astype(np.int16)
    bound = 6 * np.sqrt(2 / clean[..., 0].size)
    print('\n| corruption | severity | KS (all values) / critical | max KS per clean-level quarter / critical | '
          'max |corr diff| |')
    print('|---|---|---|---|---|')
    for name in reference_test.RANDOM:
        rng = np.random.default_rng(0)
        for severity in range(1, 6):
            expected = np.stack([reference.run_with_noise_generator(name, view, severity, rng) for view in views])
            expected = expected - clean
            ours = reference_test.to_uint8(current.corrupt(name, batch, severity,
                                                           torch.Generator().manual_seed(severity))) - clean
            quarters = []
            for low in range(0, 256, 64):
                inside = (clean >= low) & (clean < low + 64)
                if inside.sum() >= 1000:
                    quarters.append((reference_test.ks_distance(expected[inside], ours[inside]),
                                     reference_test.ks_critical(inside.sum(), inside.sum())))
            worst = max(quarters, key=lambda quarter: quarter[0] / quarter[1])
            correlation = np.abs(reference_test.correlations(expected.astype(float))
                                 - reference_test.correlations(ours.astype(float))).max()
            print(f'| {name} | {severity} | {reference_test.ks_distance(expected, ours):.4f} / '
                  f'{reference_test.ks_critical(clean.size, clean.size):.4f} | {worst[0]:.4f} / {worst[1]:.4f} | '
                  f'{correlation:.4f} (bound {bound:.4f}) |')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('revision', nargs='?', default='163ec1b',
                        help='git revision of the "before" column (default 163ec1b)')
    args = parser.parse_args(argv)
    views, batch = reference_test.photos.__wrapped__()
    with tempfile.TemporaryDirectory() as folder:
        before = module_at(args.revision, Path(folder))
        reference = Reference(Path(folder))
        deterministic_table(reference, before, views, batch)
        same_draws_table(reference, views, batch)
        random_table(reference, views, batch)


if __name__ == '__main__':
    main()
