"""The torch ImageNet-C corruptions against the reference implementation itself, on real photographs.

The reference is Hendrycks' own PyPI release of ImageNet-C's corruption functions, ``imagenet_c`` 0.0.3 (its
``imagenet_c/corruptions.py`` is hendrycks/robustness's ``ImageNet-C/imagenet_c/imagenet_c/corruptions.py``; the
corruptions used here are also those of ``create_c/make_imagenet_c.py``, which made ImageNet-C). Its sdist is fetched
with pip into a cache on first use (``~/.cache/timm-rspc/tests``, or ``$TIMM_RSPC_TEST_CACHE``; ``$IMAGENET_C_SDIST``
names a local copy); nothing of it is committed. Its module imports Wand (ImageMagick) and ``pkg_resources`` at the
top, which the functions tested here do not use, so only the needed function definitions are executed, with numpy,
scikit-image, scipy, Pillow and OpenCV (``opencv-python-headless``) as the reference imports them, after the smallest
textual adaptations to today's libraries (listed in ``ADAPTATIONS``: scikit-image's ``multichannel=True`` became
``channel_axis=-1``, numpy 2 removed ``np.float_``).

Images: scikit-image's astronaut, chelsea and coffee photographs, through ImageNet-C's own pipeline (torchvision
``Resize(256)`` and ``CenterCrop(224)`` on the PIL image, the corruption, then ``np.uint8`` of the result). The torch
corruptions run on the three images as one batch and are brought to 8 bits the same way.

Fidelity classes: *exact* corruptions agree within 1 grey level on every pixel at every severity; *in distribution*
ones (random) must have the same per-pixel distribution (checked on the corrupted-minus-clean values) and the same
independence between pixels and channels. Where the randomness is a few draws the reference can be handed (fog's
plasma fractal, frost's photograph and crop, elastic_transform's jitter and fields), the reference's ``np.random``
calls receive the torch function's own draws and the outputs must agree within 1 grey level.
"""
import ast
import hashlib
import io
import tarfile
import types
from pathlib import Path

import cv2  # opencv-python-headless, the dev extra: the reference's own dependency
import numpy as np
import PIL.Image as PIL_Image
import pytest
import scipy.ndimage
import skimage  # the dev extra: the reference's own dependency, and its sample photographs
import skimage.color
import skimage.data
import skimage.filters
import skimage.util
import torch

from sdists import SdistUnavailable, fetch_sdist
from timm_rspc.corruptions import SEVERITIES, corrupt

REFERENCE_PACKAGE, REFERENCE_VERSION = 'imagenet_c', '0.0.3'
REFERENCE_SHA256 = '93f8ed69710615bdaf9e90805b01c2ba8790bba2095c91db874560eca79696f9'  # the sdist on PyPI
REFERENCE_MODULE = f'{REFERENCE_PACKAGE}-{REFERENCE_VERSION}/imagenet_c/corruptions.py'
# (old text, new text, how often it must occur in the reference file): the only changes made to the reference.
ADAPTATIONS = (
    ('multichannel=True', 'channel_axis=-1', 3),   # scikit-image >= 0.19 renamed it, 0.21 removed the old name
    ('np.float_', 'np.float64', 1),                # numpy 2 removed the alias (plasma_fractal)
)
IMAGES = ('astronaut', 'chelsea', 'coffee')
FLOAT32_SLACK = 1e-3  # grey levels
EXACT = ('defocus_blur', 'zoom_blur', 'gaussian_blur', 'brightness', 'contrast', 'pixelate', 'jpeg_compression',
         'saturate')
RANDOM = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise')


def reference_sdist() -> Path:
    """``$IMAGENET_C_SDIST``, else the cached sdist, else fetched with pip; skips only if none can be had."""
    try:
        return fetch_sdist(REFERENCE_PACKAGE, REFERENCE_VERSION, 'IMAGENET_C_SDIST')
    except SdistUnavailable as e:
        pytest.skip(f'the reference implementation: {e}')


def reference_source() -> str:
    sdist = reference_sdist()
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert digest == REFERENCE_SHA256, f'{sdist} is not the {REFERENCE_PACKAGE} {REFERENCE_VERSION} sdist ({digest})'
    with tarfile.open(sdist) as tar:
        source = tar.extractfile(REFERENCE_MODULE).read().decode()
    for old, new, count in ADAPTATIONS:
        assert source.count(old) == count, f'the reference file changed: {old!r} occurs {source.count(old)} times'
        source = source.replace(old, new)
    return source


@pytest.fixture(scope='module')
def reference():
    """The reference's corruption functions (and helpers), defined from its own source."""
    namespace = {'np': np, 'sk': skimage, 'gaussian': skimage.filters.gaussian, 'PILImage': PIL_Image,
                 'Image': PIL_Image, 'scizoom': scipy.ndimage.zoom, 'map_coordinates': scipy.ndimage.map_coordinates,
                 'cv2': cv2, 'BytesIO': io.BytesIO, '__name__': 'imagenet_c.corruptions'}
    tree = ast.parse(reference_source())
    wanted = set(EXACT) | set(RANDOM) | {'fog', 'plasma_fractal', 'clipped_zoom', 'disk', 'frost', 'elastic_transform'}
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {node.name for node in functions} == wanted
    exec(compile(ast.Module(body=functions, type_ignores=[]), REFERENCE_MODULE, 'exec'), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in wanted}, namespace=namespace)


def imagenet_c_view(image: np.ndarray):
    """ImageNet-C's preprocessing (``make_imagenet_c.py``): ``Resize(256)``, ``CenterCrop(224)`` on a PIL image."""
    from torchvision import transforms
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(PIL_Image.fromarray(image))


@pytest.fixture(scope='module')
def photos():
    """The three photographs as ImageNet-C's corruptions see them (PIL images) and as one torch batch."""
    views = [imagenet_c_view(getattr(skimage.data, name)()) for name in IMAGES]
    batch = torch.from_numpy(np.stack([np.asarray(view) for view in views])).permute(0, 3, 1, 2).float() / 255
    return views, batch


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Torch (B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 the way ImageNet-C saves its results (``np.uint8``, which
    truncates), allowing for float32: a value that is a whole grey level exactly may come out 1e-5 below it."""
    return np.uint8(np.clip(pixels.permute(0, 2, 3, 1).double().numpy() * 255 + FLOAT32_SLACK, 0, 255))


def reference_uint8(function, view, severity: int) -> np.ndarray:
    return np.uint8(function(view, severity))


def grey_level_differences(reference, name: str, photos):
    """Per severity: max and mean absolute difference in grey levels (8-bit) over the three photographs."""
    views, batch = photos
    rows = {}
    for severity in range(1, 6):
        expected = np.stack([reference_uint8(getattr(reference, name), view, severity) for view in views])
        ours = to_uint8(corrupt(name, batch, severity))
        diff = np.abs(expected.astype(np.int16) - ours.astype(np.int16))
        rows[severity] = (int(diff.max()), float(diff.mean()))
    return rows


@pytest.mark.parametrize('name', EXACT)
def test_deterministic_corruptions_match_the_reference(reference, photos, name):
    rows = grey_level_differences(reference, name, photos)
    assert all(worst <= 1 for worst, _ in rows.values()), f'{name}: (max, mean) grey levels per severity: {rows}'


class NumpyWith:
    """numpy, with ``numpy.random`` replaced by ``random`` (in the reference's namespace only)."""

    def __init__(self, random):
        self.random = random

    def __getattr__(self, name):
        return getattr(np, name)


def replayed_uniform(draws):
    """``np.random.uniform(low, high, size)`` returning ``low + (high - low) * U`` (numpy's formula) for the given
    draws U, in order."""
    draws = iter(draws)

    def uniform(low, high, size):
        unit = next(draws)
        assert unit.shape == tuple(size)
        return low + (high - low) * unit
    return uniform


def plasma_draws(batch: int, mapsize: int, seed: int):
    """The uniform draws `plasma_fractal` makes from ``torch.Generator().manual_seed(seed)``: three of shape
    (batch, n, n) per level, n = 1, 2, 4, .. mapsize / 2, as float64 numpy arrays."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [1 << level for level in range(mapsize.bit_length() - 1)]
    return [torch.rand((batch, n, n), generator=generator).double().numpy() for n in sizes for _ in range(3)]


@pytest.mark.parametrize('decay', sorted({d for _, d in SEVERITIES['fog']}))
def test_plasma_fractal_is_the_references_given_the_same_draws(reference, monkeypatch, decay):
    from timm_rspc.corruptions import plasma_fractal
    ours = plasma_fractal(2, 256, decay, torch.Generator().manual_seed(3)).double().numpy()
    draws = plasma_draws(2, 256, seed=3)
    for image in range(2):
        uniform = replayed_uniform([draw[image] for draw in draws])
        monkeypatch.setitem(reference.namespace, 'np', NumpyWith(types.SimpleNamespace(uniform=uniform)))
        expected = reference.plasma_fractal(mapsize=256, wibbledecay=decay)
        assert np.abs(expected - ours[image]).max() < 1e-5


def test_fog_matches_the_reference_given_the_same_draws(reference, photos, monkeypatch):
    views, batch = photos
    rows = {}
    for severity in range(1, 6):
        ours = to_uint8(corrupt('fog', batch, severity, torch.Generator().manual_seed(severity)))
        draws = plasma_draws(len(views), 256, seed=severity)
        expected = []
        for image, view in enumerate(views):
            uniform = replayed_uniform([draw[image] for draw in draws])
            monkeypatch.setitem(reference.namespace, 'np', NumpyWith(types.SimpleNamespace(uniform=uniform)))
            expected.append(reference_uint8(reference.fog, view, severity))
        diff = np.abs(np.stack(expected).astype(np.int16) - ours.astype(np.int16))
        rows[severity] = (int(diff.max()), float(diff.mean()))
    assert all(worst <= 1 for worst, _ in rows.values()), f'fog: (max, mean) grey levels per severity: {rows}'


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of two samples of integers in -255..255."""
    cdf_a = np.cumsum(np.bincount(a.ravel() + 255, minlength=511)) / a.size
    cdf_b = np.cumsum(np.bincount(b.ravel() + 255, minlength=511)) / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, alpha: float = 1e-5) -> float:
    """The asymptotic two-sample KS critical value (conservative for discrete samples)."""
    return float(np.sqrt(-0.5 * np.log(alpha / 2)) * np.sqrt((n + m) / (n * m)))


def correlations(residual: np.ndarray) -> np.ndarray:
    """Correlations of (B, H, W, 3) residuals: between channels (R-G, R-B, G-B) and between horizontal and vertical
    neighbours (same channel)."""
    pairs = [(residual[..., 0], residual[..., 1]), (residual[..., 0], residual[..., 2]),
             (residual[..., 1], residual[..., 2]), (residual[:, :, :-1], residual[:, :, 1:]),
             (residual[:, :-1], residual[:, 1:])]
    return np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in pairs])



@pytest.mark.parametrize('name', RANDOM)
def test_random_corruptions_have_the_references_distribution(reference, photos, monkeypatch, name):
    """Per severity, on the corrupted-minus-clean grey levels of all values: the same distribution overall and within
    each quarter of the clean grey levels (two-sample KS at alpha = 1e-5, so that the 100 or so comparisons hold
    for any seed), and the same correlations between channels and between neighbouring pixels (within 6 standard
    errors of a difference of two correlations over the n pixels, 6 * sqrt(2 / n))."""
    views, batch = photos
    clean = np.stack([np.asarray(view) for view in views]).astype(np.int16)
    strata = [(clean >= low) & (clean < low + 64) for low in range(0, 256, 64)]
    rng = np.random.default_rng(0)   # the reference's draws, seeded: np.random's calls go to this Generator
    seeded_skimage = types.SimpleNamespace(
        color=skimage.color, util=types.SimpleNamespace(random_noise=lambda *a, **k: skimage.util.random_noise(
            *a, rng=rng, **k)))
    monkeypatch.setitem(reference.namespace, 'np', NumpyWith(rng))
    monkeypatch.setitem(reference.namespace, 'sk', seeded_skimage)
    failures = []
    for severity in range(1, 6):
        expected = np.stack([reference_uint8(getattr(reference, name), view, severity) for view in views]) - clean
        ours = to_uint8(corrupt(name, batch, severity, torch.Generator().manual_seed(severity))) - clean
        for label, where in [('all', np.ones_like(clean, dtype=bool))] + list(zip(('q1', 'q2', 'q3', 'q4'), strata)):
            if where.sum() < 1000:
                continue
            distance, critical = ks_distance(expected[where], ours[where]), ks_critical(where.sum(), where.sum())
            if distance > critical:
                failures.append(f'severity {severity}, {label}: KS {distance:.4f} > {critical:.4f}')
        corr_expected, corr_ours = correlations(expected.astype(float)), correlations(ours.astype(float))
        if np.abs(corr_expected - corr_ours).max() > 6 * np.sqrt(2 / clean[..., 0].size):
            failures.append(f'severity {severity}: correlations {corr_ours.round(4)} vs {corr_expected.round(4)}')
    assert not failures, f'{name}: ' + '; '.join(failures)


def frost_photos_loader(folder: Path):
    """The reference's ``resource_filename`` for its frost photographs: they are extracted from the sdist into
    ``folder`` (the reference reads them from its installed package data)."""
    (folder / 'frost').mkdir(exist_ok=True)
    with tarfile.open(reference_sdist()) as tar:
        for member in tar.getmembers():
            if '/imagenet_c/frost/' in member.name and member.isfile():
                (folder / 'frost' / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    return lambda module, name: str(folder / name)


def test_frost_matches_the_reference_given_the_same_photograph_and_crop(reference, photos, monkeypatch, tmp_path):
    """The reference reads its frost photographs with ``cv2.imread`` from its package data (here extracted from the
    sdist); ours come from the same sdist (`timm_rspc.corruptions.reference_data`). The reference's three
    ``np.random.randint`` calls get our draws, each checked to lie in the reference's own range."""
    from timm_rspc.corruptions.imagenet_c import _frost_draws
    from timm_rspc.corruptions.reference_data import frost_images
    sdist = reference_sdist()
    monkeypatch.setenv('TIMM_RSPC_IMAGENET_C_SDIST', str(sdist))
    monkeypatch.setitem(reference.namespace, 'resource_filename', frost_photos_loader(tmp_path))
    views, batch = photos
    _, sizes = frost_images()
    rows = {}
    for severity in range(1, 6):
        ours = to_uint8(corrupt('frost', batch, severity, torch.Generator().manual_seed(severity)))
        index, top, left = _frost_draws(len(views), 224, 224, sizes, torch.Generator().manual_seed(severity), 'cpu')
        expected = []
        for image, view in enumerate(views):
            draws = iter([int(index[image]), int(top[image]), int(left[image])])

            def randint(low, high=None, size=None):
                value = next(draws)
                low, high = (0, low) if high is None else (low, high)
                assert low <= value < high, (value, low, high)
                return value
            monkeypatch.setitem(reference.namespace, 'np', NumpyWith(types.SimpleNamespace(randint=randint)))
            expected.append(reference_uint8(reference.frost, view, severity))
        diff = np.abs(np.stack(expected).astype(np.int16) - ours.astype(np.int16))
        rows[severity] = (int(diff.max()), float(diff.mean()))
    assert all(worst <= 1 for worst, _ in rows.values()), f'frost: (max, mean) grey levels per severity: {rows}'


def test_elastic_transform_matches_the_reference_given_the_same_draws(reference, photos, monkeypatch):
    """The reference's three ``np.random.uniform`` calls (the points' jitter, then the two displacement fields) get
    the draws ours makes from the same seed; OpenCV and scipy run as the reference calls them. OpenCV 5 changed
    ``warpAffine`` (exact positions instead of a 1/32-pixel grid), so the reference is run with OpenCV 3 / 4, the
    generation ImageNet-C pinned (``opencv-python ~= 3.4``) and the dev extra installs."""
    assert int(cv2.__version__.split('.')[0]) < 5, (
        f'OpenCV {cv2.__version__}: the reference elastic_transform needs OpenCV < 5 (pip install '
        f'"opencv-python-headless>=4.10,<5", as the dev extra pins); OpenCV 5 samples warpAffine differently')
    views, batch = photos
    rows = {}
    for severity in range(1, 6):
        ours = to_uint8(corrupt('elastic_transform', batch, severity, torch.Generator().manual_seed(severity)))
        generator = torch.Generator().manual_seed(severity)
        points = torch.rand((len(views), 3, 2), generator=generator).double().numpy()
        fields = torch.rand((len(views), 2, 224, 224), generator=generator).double().numpy()
        expected = []
        for image, view in enumerate(views):
            uniform = replayed_uniform([points[image], fields[image, 0], fields[image, 1]])
            monkeypatch.setitem(reference.namespace, 'np', NumpyWith(types.SimpleNamespace(uniform=uniform)))
            expected.append(reference_uint8(reference.elastic_transform, view, severity))
        diff = np.abs(np.stack(expected).astype(np.int16) - ours.astype(np.int16))
        rows[severity] = (int(diff.max()), float(diff.mean()))
    assert all(worst <= 1 for worst, _ in rows.values()), f'elastic: (max, mean) grey levels per severity: {rows}'
