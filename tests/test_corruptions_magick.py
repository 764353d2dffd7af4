"""motion_blur and snow against the reference itself, which runs ImageMagick through Wand.

The reference's ``motion_blur`` and ``snow`` (``imagenet_c`` 0.0.3, fetched with pip as in
``test_corruptions_reference.py``) call ``MagickMotionBlurImage`` of ImageMagick's MagickWand library through Wand.
Wand is pure Python (pip); the library is a system package: Debian / Ubuntu ``apt-get install libmagickwand-6.q16-6``
(or ``libmagickwand-dev``), ImageMagick 6.9.11-60 Q16 here. Without it these tests skip, naming the package.

Only the needed parts of the reference are executed: the ``MagickMotionBlurImage.argtypes`` declaration, its
``MotionImage`` class, ``clipped_zoom``, ``motion_blur`` and ``snow``, with one more adaptation to today's numpy
(numpy 2 removed the binary mode of ``np.fromstring``; ``np.frombuffer`` reads the same bytes).

Both are random (an angle per image; snow also its noise), so the reference's ``np.random`` calls receive the draws
ours makes from the same seed and the outputs must agree within 1 grey level (they are bit-identical where
ImageMagick's arithmetic is followed exactly); then their distributions are compared without shared draws.
"""
import ast
import ctypes
import io
import re
import types

import cv2
import numpy as np
import PIL.Image as PIL_Image
import pytest
import scipy.ndimage
import skimage.data
import torch

from test_corruptions_reference import (
    IMAGES, REFERENCE_MODULE, NumpyWith, imagenet_c_view, ks_critical, reference_source, replayed_uniform, to_uint8,
)
from timm_rspc.corruptions.motion import (
    SEVERITIES, _motion_kernel, _motion_offsets, magick_motion_blur, motion_blur, snow,
)

MAGICK_PACKAGE = 'libmagickwand-6.q16-6'
MAGICK_ADAPTATIONS = (('np.fromstring(', 'np.frombuffer(', 2),)   # numpy 2 removed fromstring's binary mode


def wand():
    """Wand's ``Image`` and MagickWand library, or a skip naming the missing package."""
    try:
        import wand.api
        import wand.image
        import wand.version
    except ImportError as error:   # Wand missing, or its ImportError: 'MagickWand shared library not found'
        pytest.skip(f'the reference needs ImageMagick through Wand: pip install Wand and apt-get install '
                    f'{MAGICK_PACKAGE} (or libmagickwand-dev): {str(error).splitlines()[0]}')
    version = wand.version.MAGICK_VERSION
    if not version.startswith('ImageMagick 6.') or ' Q16 ' not in version:
        pytest.skip(f'{version}: the torch motion blur follows ImageMagick 6 Q16 without HDRI, which ImageNet-C used '
                    f'(ImageMagick 7, Q8 and HDRI builds round differently): apt-get install {MAGICK_PACKAGE}')
    return wand.image.Image, wand.api.library, version


def truncating_png_writer(version: str) -> bool:
    """ImageMagick 6.9.10-69 and later truncate to 8 bits when writing the PNG, as `magick_motion_blur` does;
    earlier versions round to the nearest grey level."""
    numbers = tuple(int(n) for n in re.match(r'ImageMagick (\d+)\.(\d+)\.(\d+)-(\d+)', version).groups())
    return numbers >= (6, 9, 10, 69)


@pytest.fixture(scope='module')
def reference():
    """The reference's ``motion_blur`` and ``snow`` (with ``clipped_zoom`` and ``MotionImage``), from its source."""
    wand_image, library, version = wand()
    source = reference_source()
    for old, new, count in MAGICK_ADAPTATIONS:
        assert source.count(old) == count, f'the reference file changed: {old!r} occurs {source.count(old)} times'
        source = source.replace(old, new)
    namespace = {'np': np, 'cv2': cv2, 'PILImage': PIL_Image, 'BytesIO': io.BytesIO, 'ctypes': ctypes,
                 'scizoom': scipy.ndimage.zoom, 'WandImage': wand_image, 'wandlibrary': library,
                 '__name__': 'imagenet_c.corruptions'}
    wanted = {'clipped_zoom', 'motion_blur', 'snow', 'MotionImage'}
    tree = ast.parse(source)
    nodes = [node for node in tree.body
             if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted)
             or (isinstance(node, ast.Assign) and 'MagickMotionBlurImage.argtypes' in ast.unparse(node.targets[0]))]
    assert len(nodes) == len(wanted) + 1
    exec(compile(ast.Module(body=nodes, type_ignores=[]), REFERENCE_MODULE, 'exec'), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in wanted}, namespace=namespace, version=version)


@pytest.fixture(scope='module')
def photos():
    """The reference test's photographs as ImageNet-C's corruptions see them (PIL images) and as one torch batch."""
    views = [imagenet_c_view(getattr(skimage.data, name)()) for name in IMAGES]
    batch = torch.from_numpy(np.stack([np.asarray(view) for view in views])).permute(0, 3, 1, 2).float() / 255
    return views, batch


def differences(expected: np.ndarray, ours: np.ndarray):
    diff = np.abs(expected.astype(np.int16) - ours.astype(np.int16))
    return int(diff.max()), float(diff.mean())


def magick_blur(reference, image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur of an 8-bit (H, W) or (H, W, 3) image through a PNG, as the reference does it."""
    buffer = io.BytesIO()
    PIL_Image.fromarray(image).save(buffer, format='PNG')
    blurred = reference.MotionImage(blob=buffer.getvalue())
    blurred.motion_blur(radius=radius, sigma=sigma, angle=angle)
    out = cv2.imdecode(np.frombuffer(blurred.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint8   # ImageMagick writes the 8-bit PNG's depth back
    if out.ndim == image.ndim:
        return out if out.ndim == 2 else out[..., ::-1]   # BGR to RGB
    return np.repeat(out[..., None], 3, axis=-1)           # a grey result is written as a grey PNG


@pytest.mark.parametrize('radius, sigma', sorted(set(SEVERITIES['motion_blur']) | {c[4:6] for c in SEVERITIES['snow']}))
def test_magick_motion_blur_is_imagemagicks_bit_for_bit(reference, radius, sigma):
    """On random images of odd sizes (edge pixels taken from all sides), at angles over the whole circle and those
    where the offsets' rounding is closest to a tie: bit-identical (within 1 grey level for ImageMagick before
    6.9.10-69, whose PNG writer rounds)."""
    rng = np.random.default_rng(radius * 100 + sigma)
    images = rng.integers(0, 256, size=(6, 23, 37, 3), dtype=np.uint8)
    images[1] = np.linspace(0, 255, 37, dtype=np.uint8)[None, :, None]   # a ramp: smooth sums, no luck needed
    angles = np.array([0., 90., -135., 30., 45., float(rng.uniform(-180, 180))])
    ours = magick_motion_blur(torch.from_numpy(images).permute(0, 3, 1, 2).double(), radius, sigma,
                              torch.from_numpy(angles))
    ours = ours.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    expected = np.stack([magick_blur(reference, image, radius, sigma, angle) for image, angle in zip(images, angles)])
    worst, mean = differences(expected, ours)
    assert worst == 0 if truncating_png_writer(reference.version) else worst <= 1, (reference.version, worst, mean)


def test_motion_kernel_and_offsets():
    kernel = _motion_kernel(10, 3)
    assert len(kernel) == 21 and abs(sum(kernel) - 1) < 1e-15 and kernel[0] > kernel[1] > kernel[20] > 0
    cols, rows = _motion_offsets(5, torch.tensor([0., 90., -45.], dtype=torch.float64))
    assert cols.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 0], [0, 1, 1, 2, 3]]
    assert rows.tolist() == [[0, 0, 0, 0, 0], [0, 1, 2, 3, 4], [0, -1, -1, -2, -3]]   # 0.5 rounds down: ceil(v - .5)
    with pytest.raises(ValueError, match='radius must be positive'):
        _motion_kernel(0, 3)


def angle_draws(batch: int, seed: int, before=()):
    """The uniform draw per image ours makes from ``torch.Generator().manual_seed(seed)`` after draws of the shapes
    ``before``, as float64 numpy: one value per image."""
    generator = torch.Generator().manual_seed(seed)
    for shape in before:
        torch.randn(shape, generator=generator)
    return torch.rand((batch,), generator=generator).double().numpy()


def test_motion_blur_is_the_references_given_the_same_angle(reference, photos, monkeypatch):
    views, batch = photos
    rows = {}
    for severity in range(1, 6):
        ours = to_uint8(motion_blur(batch, severity, torch.Generator().manual_seed(severity)))
        units = angle_draws(len(views), severity)
        expected = []
        for image, view in enumerate(views):
            uniform = replayed_uniform([units[image].reshape(())])
            monkeypatch.setitem(reference.namespace, 'np', NumpyWith(types.SimpleNamespace(
                uniform=lambda low, high, size=(): uniform(low, high, size))))
            expected.append(np.uint8(reference.motion_blur(view, severity)))
        rows[severity] = differences(np.stack(expected), ours)
    assert all(worst <= 1 for worst, _ in rows.values()), f'motion_blur: (max, mean) grey levels per severity: {rows}'


def test_snow_is_the_references_given_the_same_draws(reference, photos, monkeypatch):
    """The reference's ``np.random.normal(loc, scale)`` gets ``loc + scale * n`` of our standard normals n, its
    ``np.random.uniform(-135, -45)`` our angle's draw. On float64 images the result is the reference's bit for bit
    (but for rare last-bit differences where OpenCV's grey conversion is not the fused SIMD loop); float32 output can
    round a value just below a grey level up to it (1 grey level, on about 0.07 % of values)."""
    views, batch = photos
    rows, rows64 = {}, {}
    for severity in range(1, 6):
        ours = to_uint8(snow(batch, severity, torch.Generator().manual_seed(severity)))
        ours64 = snow(batch.double(), severity, torch.Generator().manual_seed(severity))
        generator = torch.Generator().manual_seed(severity)
        normals = torch.randn((len(views), 1, 224, 224), generator=generator).double().numpy()
        units = torch.rand((len(views),), generator=generator).double().numpy()
        expected = []
        for image, view in enumerate(views):
            uniform = replayed_uniform([units[image].reshape(())])

            def normal(size, loc, scale, n=normals[image, 0]):
                assert tuple(size) == n.shape
                return loc + scale * n
            monkeypatch.setitem(reference.namespace, 'np', NumpyWith(types.SimpleNamespace(
                normal=normal, uniform=lambda low, high, size=(): uniform(low, high, size))))
            expected.append(np.uint8(reference.snow(view, severity)))
        rows[severity] = differences(np.stack(expected), ours)
        rows64[severity] = differences(np.stack(expected), np.uint8(ours64.permute(0, 2, 3, 1).numpy() * 255))
    assert all(worst <= 1 for worst, _ in rows.values()), f'snow: (max, mean) grey levels per severity: {rows}'
    assert all(worst <= 1 and mean < 1e-5 for worst, mean in rows64.values()), f'snow, float64: {rows64}'


def per_image_statistics(residual: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) corrupted-minus-clean grey levels -> (N, 3): the mean, and the log ratios of the residual's
    horizontal to vertical and of its two diagonal gradient energies (which the angle of the blur sets)."""
    residual = residual.astype(float)

    def energy(a, b):
        return ((a - b) ** 2).mean(axis=(1, 2, 3)) + 1e-9
    return np.stack([residual.mean(axis=(1, 2, 3)),
                     np.log(energy(residual[:, :, 1:], residual[:, :, :-1])
                            / energy(residual[:, 1:], residual[:, :-1])),
                     np.log(energy(residual[:, 1:, 1:], residual[:, :-1, :-1])
                            / energy(residual[:, 1:, :-1], residual[:, :-1, 1:]))], axis=1)


def ks_per_statistic(expected: np.ndarray, ours: np.ndarray):
    """Two-sample KS statistics and the critical value (alpha = 1e-5) of each column of two (N, k) samples."""
    def distance(a, b):
        values = np.sort(np.concatenate([a, b]))
        return np.abs(np.searchsorted(np.sort(a), values, 'right') / a.size
                      - np.searchsorted(np.sort(b), values, 'right') / b.size).max()
    return [distance(e, o) for e, o in zip(expected.T, ours.T)], ks_critical(len(expected), len(ours))


@pytest.mark.parametrize('severity', [1, 5])
def test_motion_blur_has_the_references_distribution(reference, photos, monkeypatch, severity):
    """Without shared draws (the reference's ``np.random`` seeded, ours a torch generator): 150 blurs of one 48 px
    crop each, per image its mean change and how much it smooths horizontally vs vertically and along the two
    diagonals (set by the angle): the same distributions (two-sample KS, alpha = 1e-5)."""
    views, batch = photos
    crop = np.array(views[0])[60:108, 80:128]
    count = 150
    monkeypatch.setitem(reference.namespace, 'np', NumpyWith(np.random.default_rng(severity)))
    expected = np.stack([np.uint8(reference.motion_blur(PIL_Image.fromarray(crop), severity)) for _ in range(count)])
    pixels = torch.from_numpy(crop).permute(2, 0, 1).float().div(255).expand(count, -1, -1, -1)
    ours = to_uint8(motion_blur(pixels, severity, torch.Generator().manual_seed(severity)))
    clean = crop.astype(np.int16)
    distances, critical = ks_per_statistic(per_image_statistics(expected - clean), per_image_statistics(ours - clean))
    assert max(distances) < critical, (distances, critical)


def test_snow_has_the_references_distribution(reference, photos, monkeypatch):
    """Without shared draws, at severities 2 and 5: 30 snowfalls on one photograph each, per image the mean change
    (how much snow) and the streaks' direction statistics: the same distributions (two-sample KS, alpha = 1e-5)."""
    views, batch = photos
    count = 30
    clean = np.asarray(views[1]).astype(np.int16)
    for severity in (2, 5):
        monkeypatch.setitem(reference.namespace, 'np', NumpyWith(np.random.default_rng(severity)))
        expected = np.stack([np.uint8(reference.snow(views[1], severity)) for _ in range(count)])
        ours = to_uint8(snow(batch[1:2].expand(count, -1, -1, -1), severity, torch.Generator().manual_seed(severity)))
        distances, critical = ks_per_statistic(per_image_statistics(expected - clean),
                                               per_image_statistics(ours - clean))
        assert max(distances) < critical, (severity, distances, critical)


def test_gradients_pass_through_the_blur():
    """motion_blur's gradient is the blur's (straight through the 8-bit roundings): each output pixel is a weighted
    average, so the gradient of the sum is non-negative and sums to the number of values; snow's is the
    whitening's."""
    pixels = (torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1).requires_grad_(True)
    motion_blur(pixels, 3, torch.Generator().manual_seed(1)).sum().backward()
    assert (pixels.grad >= 0).all() and abs(float(pixels.grad.sum()) - pixels.numel()) < 1e-3
    weight = SEVERITIES['snow'][0][6]
    dark = (pixels.detach() * 0.1).requires_grad_(True)   # dark: max(x, 1.5 grey + 0.5) is the grey term
    out = snow(dark, 1, torch.Generator().manual_seed(1))
    out.sum().backward()
    # d out_c / d x_c' = w [c = c'] + (1 - w) 1.5 coefficient_c' wherever no channel of the pixel is clipped at 1
    unclipped = (out < 1).all(dim=1, keepdim=True).expand_as(out)
    expected = weight + (1 - weight) * 1.5 * 3 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert unclipped.float().mean() > 0.5
    torch.testing.assert_close(dark.grad[unclipped], expected.expand_as(out)[unclipped])


def test_bad_severity_is_refused():
    with pytest.raises(ValueError, match='1..5'):
        motion_blur(torch.rand(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match='1..5'):
        snow(torch.rand(1, 3, 8, 8), 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_magick_motion_blur_on_cuda_is_the_cpus():
    levels = torch.randint(0, 256, (3, 3, 40, 50), generator=torch.Generator().manual_seed(0)).double()
    angles = torch.tensor([-44.3, 0.7, 31.2], dtype=torch.float64)
    cpu = magick_motion_blur(levels, 15, 8, angles)
    assert torch.equal(magick_motion_blur(levels.cuda(), 15, 8, angles.cuda()).cpu(), cpu)
