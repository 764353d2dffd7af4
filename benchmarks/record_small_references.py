"""Record the reference's 32 and 64 px corruptions (CIFAR-10-C's and Tiny-ImageNet-C's scripts) for the tests.

    OMP_NUM_THREADS=1 python benchmarks/record_small_references.py --robustness PATH [--output FILE]

The 32 / 64 px variants of ImageNet-C's corruptions exist only as scripts in hendrycks/robustness
(``ImageNet-C/create_c/make_cifar_c.py``, ``make_tinyimagenet_c.py``; ``make_imagenet_64_c.py`` has the same
functions as the latter), not on PyPI, so ``tests/test_corruptions_small.py`` compares against outputs recorded here
from a local checkout of that repository (``git clone https://github.com/hendrycks/robustness``; PATH is the
checkout, or a bare git directory, read at HEAD). Nothing of it is copied into this repository but the outputs.

What runs: only the needed definitions of each script (the 19 corruption functions, ``disk``, ``plasma_fractal``,
``clipped_zoom``, ``MotionImage`` and its ``MagickMotionBlurImage.argtypes``), ``exec``'d in a namespace holding the
names the script imports (numpy, scikit-image, scipy.ndimage, Pillow, OpenCV, Wand), after the smallest adaptations
to today's libraries (``ADAPTATIONS``, each occurrence counted), as ``tests/test_corruptions_reference.py`` does for
the 224 px package. frost reads the script's own photographs (``./frost1.png`` .. ``./frost6.jpg`` next to it; the
same files as the ``imagenet_c`` sdist's).

Random corruptions get the torch functions' own draws: ours runs first with ``torch.Generator().manual_seed(seed)``
while `timm_rspc.corruptions.draws` records what it drew, then the reference's ``np.random`` calls (in its namespace
only) return those draws in numpy's form (``normal(loc, scale)``: ``loc + scale * n``; ``uniform(low, high)``:
``low + (high - low) * u``; ``poisson``: our counts; ``randint``: our integers; scikit-image's ``random_noise(mode=
's&p')`` gets our flips and salt choices through its ``_bernoulli``), each call checked against the shape and
arguments expected. The recorded values are the reference's ``np.uint8`` of its result (what make_cifar_c.py saves;
make_tinyimagenet_c.py then also stores a JPEG of quality 85, not reproduced here).

Images: scikit-image's astronaut (centre square, Pillow bilinear resize to 32 x 32: a CIFAR-sized photograph) and
chelsea (centre square, 64 x 64, as make_tinyimagenet_c.py's ``Resize((64, 64))``), stored with the recordings.
Output: one ``numpy.savez_compressed`` file (default ``tests/data/small_references.npz``): per set of constants the
clean image, per corruption the (5, S, S, 3) uint8 outputs of severities 1-5 and their 5 seeds, and the versions
used. It prints ours against the recording (max / mean grey levels), the numbers the test checks.
"""
import argparse
import ast
import ctypes
import io
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import cv2
import numpy as np
import PIL
import PIL.Image as PIL_Image
import scipy
import scipy.ndimage
import skimage
import skimage.color
import skimage.data
import skimage.filters
import skimage.util
import skimage.util.noise
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from timm_rspc.corruptions import CORRUPTIONS, corrupt, draws  # noqa: E402
from timm_rspc.corruptions.imagenet_c import FROST_PHOTO_SCALES, SEVERITIES_BY_CONSTANTS, _frost_draws  # noqa: E402
from timm_rspc.corruptions.resize import frost_images_scaled  # noqa: E402

SCRIPTS = {'cifar': 'make_cifar_c.py', 'tinyimagenet': 'make_tinyimagenet_c.py'}
SIZES = {'cifar': 32, 'tinyimagenet': 64}
PHOTOS = {'cifar': 'astronaut', 'tinyimagenet': 'chelsea'}
CREATE_C = 'ImageNet-C/create_c'
FROST_FILES = ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg')
# (old text, new text, how often it occurs in each script): the only changes made to the reference's code.
ADAPTATIONS = (
    ('multichannel=True', 'channel_axis=-1', 3),   # scikit-image >= 0.19 renamed it, 0.21 removed the old name
    ('np.float_', 'np.float64', 1),                # numpy 2 removed the alias (plasma_fractal)
    ('np.fromstring(', 'np.frombuffer(', 2),       # numpy 2 removed fromstring's binary mode (motion_blur, snow)
)
HELPERS = ('disk', 'plasma_fractal', 'clipped_zoom', 'MotionImage')
DEFAULT_OUTPUT = REPO_ROOT / 'tests' / 'data' / 'small_references.npz'


# The corruptions in the order that numbers their seeds: fixed here (the registry's order when the recordings were
# made), so a seed never depends on the order in which the registry happens to hold its entries.
SEED_ORDER = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'defocus_blur', 'zoom_blur',
              'gaussian_blur', 'frost', 'brightness', 'fog', 'contrast', 'elastic_transform', 'pixelate',
              'jpeg_compression', 'saturate', 'glass_blur', 'spatter', 'motion_blur', 'snow')


def seed_of(constants: str, name: str, severity: int) -> int:
    """The seed of one recording: distinct per set of constants, corruption and severity."""
    return 100000 * (1 + list(SCRIPTS).index(constants)) + 100 * SEED_ORDER.index(name) + severity


class Checkout:
    """Files of a hendrycks/robustness checkout (a work tree, or a bare git directory read at HEAD)."""

    def __init__(self, path: Path):
        self.path = path
        self.work_tree = (path / CREATE_C).is_dir()

    def read(self, relative: str) -> bytes:
        if self.work_tree:
            return (self.path / relative).read_bytes()
        return subprocess.run(['git', f'--git-dir={self.path}', 'show', f'HEAD:{relative}'], check=True,
                              capture_output=True).stdout

    def commit(self) -> str:
        git = ['git', '-C', str(self.path)] if self.work_tree else ['git', f'--git-dir={self.path}']
        done = subprocess.run(git + ['rev-parse', 'HEAD'], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else 'unknown'


def reference_functions(checkout: Checkout, constants: str, frost_folder: Path) -> dict:
    """The script's corruption functions and helpers, defined from its own source in a namespace of their own."""
    import wand.api
    import wand.image
    script = f'{CREATE_C}/{SCRIPTS[constants]}'
    source = checkout.read(script).decode()
    for old, new, count in ADAPTATIONS:
        assert source.count(old) == count, f'{script} changed: {old!r} occurs {source.count(old)} times'
        source = source.replace(old, new)

    def imread(filename, *args):   # the script reads './frostN' from its own folder
        return cv2.imread(str(frost_folder / Path(filename).name), *args)
    opencv = types.SimpleNamespace(**{name: getattr(cv2, name) for name in dir(cv2) if not name.startswith('__')})
    opencv.imread = imread
    namespace = {'np': np, 'sk': skimage, 'gaussian': skimage.filters.gaussian, 'PILImage': PIL_Image,
                 'Image': PIL_Image, 'scizoom': scipy.ndimage.zoom, 'map_coordinates': scipy.ndimage.map_coordinates,
                 'cv2': opencv, 'BytesIO': io.BytesIO, 'ctypes': ctypes, 'WandImage': wand.image.Image,
                 'wandlibrary': wand.api.library, '__name__': SCRIPTS[constants]}
    wanted = set(CORRUPTIONS) | set(HELPERS)
    nodes = [node for node in ast.parse(source).body
             if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted)
             or (isinstance(node, ast.Assign) and 'MagickMotionBlurImage.argtypes' in ast.unparse(node.targets[0]))]
    assert len(nodes) == len(wanted) + 1, sorted(n.name for n in nodes if hasattr(n, 'name'))
    exec(compile(ast.Module(body=nodes, type_ignores=[]), script, 'exec'), namespace)
    return namespace


def photo(constants: str) -> np.ndarray:
    """The clean (S, S, 3) uint8 image: a scikit-image photograph's centre square, bilinear-resized by Pillow."""
    image = getattr(skimage.data, PHOTOS[constants])()
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    square = PIL_Image.fromarray(image[top:top + side, left:left + side])
    size = SIZES[constants]
    return np.asarray(square.resize((size, size), PIL_Image.BILINEAR)).copy()


def recorded_draws(name: str, pixels: torch.Tensor, severity: int, seed: int, constants: str):
    """Ours on ``pixels`` with ``manual_seed(seed)``, and the draws it made: [(kind, tensor), ...] in order."""
    made, originals = [], {kind: getattr(draws, kind) for kind in ('rand', 'randn', 'randint', 'poisson')}

    def recording(kind):
        def draw(*args, **kwargs):
            value = originals[kind](*args, **kwargs)
            made.append((kind, value.clone()))
            return value
        return draw
    try:
        for kind in originals:
            setattr(draws, kind, recording(kind))
        out = corrupt(name, pixels, severity, torch.Generator().manual_seed(seed), constants=constants)
    finally:
        for kind, function in originals.items():
            setattr(draws, kind, function)
    return out, made


class Replay:
    """``np.random`` for the reference: each call must be the next expected one, (method, answer(*args, **kwargs))."""

    def __init__(self, calls):
        self.calls = list(calls)

    def __getattr__(self, method):
        def call(*args, **kwargs):
            assert self.calls, f'the reference called np.random.{method} more often than ours drew'
            expected, answer = self.calls.pop(0)
            assert method == expected, f'the reference called np.random.{method}, ours drew for {expected}'
            return answer(*args, **kwargs)
        return call


class NumpyWith:
    """numpy, with ``numpy.random`` replaced (in the reference's namespace only)."""

    def __init__(self, random):
        self.random = random

    def __getattr__(self, name):
        return getattr(np, name)


def hwc(tensor: torch.Tensor) -> np.ndarray:
    """One image's (C, H, W) draw as the reference's (H, W, C) float64 array."""
    return tensor.permute(1, 2, 0).double().numpy()


def normal_answer(values: np.ndarray):
    def normal(loc=0.0, scale=1.0, size=None):
        assert tuple(size) == values.shape, (size, values.shape)
        return loc + scale * values
    return normal


def uniform_answer(units: np.ndarray):
    def uniform(low=0.0, high=1.0, size=None):
        assert (() if size is None else tuple(size)) == units.shape, (size, units.shape)
        return low + (high - low) * (units if units.shape else float(units))
    return uniform


def replay_calls(name: str, made, severity: int, constants: str, seed: int):
    """The reference's expected ``np.random`` calls for ``name``, answered with our draws (one image)."""
    if name in ('gaussian_noise', 'speckle_noise'):
        return [('normal', normal_answer(hwc(made[0][1][0])))]
    if name == 'shot_noise':
        counts = hwc(made[0][1][0])

        def poisson(lam):
            assert lam.shape == counts.shape
            return counts
        return [('poisson', poisson)]
    if name == 'fog':
        return [('uniform', uniform_answer(value[0].double().numpy())) for _, value in made]
    if name == 'frost':
        size = SIZES[constants]
        _, sizes = frost_images_scaled('cpu', FROST_PHOTO_SCALES[constants])
        index, top, left = (int(t[0]) for t in _frost_draws(1, size, size, sizes, torch.Generator().manual_seed(seed),
                                                            'cpu'))

        def randint_answer(value):
            def randint(low, high=None, size=None):
                low, high = (0, low) if high is None else (low, high)
                assert size is None and low <= value < high, (value, low, high)
                return value
            return randint
        return [('randint', randint_answer(value)) for value in (index, top, left)]
    if name == 'elastic_transform':
        points, fields = made[0][1][0].double().numpy(), made[1][1][0].double().numpy()
        return [('uniform', uniform_answer(points)), ('uniform', uniform_answer(fields[0])),
                ('uniform', uniform_answer(fields[1]))]
    if name == 'glass_blur':
        delta = SEVERITIES_BY_CONSTANTS[constants]['glass_blur'][severity - 1][1]
        pairs = [pair for _, value in made for pair in (value[0] - delta).reshape(-1, 2).tolist()]

        def randint_answer(pair):
            def randint(low, high, size):
                assert (low, high, tuple(size)) == (-delta, delta, (2,))
                return np.array(pair)
            return randint
        return [('randint', randint_answer(pair)) for pair in pairs]
    if name == 'motion_blur':
        return [('uniform', uniform_answer(made[0][1][0].double().numpy()))]
    if name == 'snow':
        return [('normal', normal_answer(made[0][1][0, 0].double().numpy())),
                ('uniform', uniform_answer(made[1][1][0].double().numpy()))]
    if name == 'spatter':
        return [('normal', normal_answer(made[0][1][0].double().numpy()))]
    assert name == 'impulse_noise' or not made, f'{name}: unexpected draws'
    return []   # impulse_noise: scikit-image's random_noise draws (`impulse_noise_module`), not np.random


def impulse_noise_module(made, severity: int, constants: str):
    """scikit-image for the reference's impulse_noise: ``random_noise(mode='s&p')`` itself, its two Bernoulli draws
    (flip with probability c, then salt with 1/2) taken from ours: u < c flips, salt where u >= c / 2 (ours sets
    u < c / 2 to 0 and c / 2 <= u < c to 1)."""
    units = hwc(made[0][1][0])
    amount = SEVERITIES_BY_CONSTANTS[constants]['impulse_noise'][severity - 1]
    answers = [units < amount, units >= amount / 2]

    def random_noise(image, mode, amount, **kwargs):
        assert mode == 's&p' and image.shape == units.shape
        original = skimage.util.noise._bernoulli
        skimage.util.noise._bernoulli = lambda p, shape, rng: answers.pop(0)
        try:
            return skimage.util.random_noise(image, mode=mode, amount=amount, **kwargs)
        finally:
            skimage.util.noise._bernoulli = original
            assert not answers
    return types.SimpleNamespace(util=types.SimpleNamespace(random_noise=random_noise), color=skimage.color)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Ours (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 as the reference saves (``np.uint8``: truncation), with 1e-3
    grey levels of slack for float32 (a whole grey level may come out 1e-5 below it)."""
    return np.uint8(np.clip(pixels[0].permute(1, 2, 0).double().numpy() * 255 + 1e-3, 0, 255))


def record(checkout: Checkout, output: Path):
    import wand.version
    arrays = {}
    with tempfile.TemporaryDirectory() as folder:
        frost_folder = Path(folder)
        for file in FROST_FILES:
            (frost_folder / file).write_bytes(checkout.read(f'{CREATE_C}/{file}'))
        for constants in SCRIPTS:
            namespace = reference_functions(checkout, constants, frost_folder)
            clean = photo(constants)
            pixels = torch.from_numpy(clean).permute(2, 0, 1)[None].float() / 255
            arrays[f'{constants}/clean'] = clean
            for name in CORRUPTIONS:
                outputs, seeds = [], []
                for severity in range(1, 6):
                    seed = seed_of(constants, name, severity)
                    ours, made = recorded_draws(name, pixels, severity, seed, constants)
                    replay = Replay(replay_calls(name, made, severity, constants, seed))
                    namespace['np'] = NumpyWith(replay)
                    namespace['sk'] = impulse_noise_module(made, severity, constants) if name == 'impulse_noise' \
                        else skimage
                    expected = np.uint8(namespace[name](PIL_Image.fromarray(clean), severity))
                    assert not replay.calls, f'{name}: the reference left {len(replay.calls)} of our draws unused'
                    assert expected.shape == clean.shape, (name, expected.shape)
                    diff = np.abs(expected.astype(np.int16) - to_uint8(ours).astype(np.int16))
                    print(f'{constants:13s} {name:18s} severity {severity}: max {int(diff.max())}, '
                          f'mean {diff.mean():.4f} grey levels')
                    outputs.append(expected)
                    seeds.append(seed)
                arrays[f'{constants}/{name}'] = np.stack(outputs)
                arrays[f'{constants}/{name}/seeds'] = np.array(seeds, dtype=np.int64)
            namespace['np'], namespace['sk'] = np, skimage
    versions = {'hendrycks/robustness': checkout.commit(), 'numpy': np.__version__, 'scipy': scipy.__version__,
                'scikit-image': skimage.__version__, 'opencv': cv2.__version__, 'pillow': PIL.__version__,
                'imagemagick': wand.version.MAGICK_VERSION, 'torch': torch.__version__,
                'photos': PHOTOS, 'scripts': SCRIPTS}
    arrays['versions'] = np.array(json.dumps(versions))
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, **arrays)
    print(f'wrote {output} ({output.stat().st_size / 1e6:.2f} MB): {versions}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robustness', type=Path, required=True,
                        help='a hendrycks/robustness checkout (work tree or bare git directory)')
    parser.add_argument('--output', type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    checkout = Checkout(args.robustness)
    if not checkout.work_tree and not (args.robustness / 'HEAD').is_file():
        parser.error(f'{args.robustness} is neither a hendrycks/robustness work tree (no {CREATE_C}) nor a git '
                     'directory')
    record(checkout, args.output)


if __name__ == '__main__':
    main()
