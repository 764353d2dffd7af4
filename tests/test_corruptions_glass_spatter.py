"""glass_blur and spatter against the reference implementation itself, and spatter's OpenCV operations against cv2.

The reference functions are ImageNet-C's own (``imagenet_c`` 0.0.3's ``corruptions.py``, fetched and checked as in
``test_corruptions_reference.py``, whose helpers this file uses); only ``glass_blur`` and ``spatter`` are executed,
in a namespace where ``np.random`` hands them the torch functions' own draws:

- glass_blur: the ``np.random.randint(-d, d, size=(2,))`` of every visited pixel, in the loop's order (each call's
  arguments checked), so the sequential pixel copies run on the same offsets;
- spatter: the ``np.random.normal(size=(H, W), loc, scale)`` of the liquid layer.

Both must then agree with the reference within 1 grey level on 8-bit output (and within 1e-4 levels before the
truncation to 8 bits: the same arithmetic), at every severity, on scikit-image's
astronaut, chelsea and coffee through ImageNet-C's Resize(256) and CenterCrop(224). OpenCV runs as the x86 wheels
ship it (Intel IPP on, the default): spatter's distance transform is IPP's; the fixed-point one (OpenCV without
IPP) is checked against ``cv2`` with IPP switched off.
"""
import ast
import types

import cv2  # opencv-python-headless, the dev extra: the reference's own dependency
import numpy as np
import pytest
import skimage.data
import skimage.filters
import torch

from test_corruptions_reference import IMAGES, REFERENCE_MODULE, NumpyWith, imagenet_c_view, reference_source, to_uint8
from timm_rspc.corruptions.glass import SEVERITIES as GLASS, glass_blur, glass_shuffle
from timm_rspc.corruptions.spatter import (
    SEVERITIES as SPATTER, box_blur3, canny, distance_transform, equalize_hist, spatter,
)


@pytest.fixture(scope='module')
def reference():
    namespace = {'np': np, 'gaussian': skimage.filters.gaussian, 'cv2': cv2, '__name__': 'imagenet_c.corruptions'}
    wanted = {'glass_blur', 'spatter'}
    functions = [node for node in ast.parse(reference_source()).body
                 if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {node.name for node in functions} == wanted
    exec(compile(ast.Module(body=functions, type_ignores=[]), REFERENCE_MODULE, 'exec'), namespace)
    return namespace


@pytest.fixture(scope='module')
def photos():
    views = [imagenet_c_view(getattr(skimage.data, name)()) for name in IMAGES]
    batch = torch.from_numpy(np.stack([np.asarray(view) for view in views])).permute(0, 3, 1, 2).float() / 255
    return views, batch


@pytest.fixture
def ipp():
    """Restores OpenCV's IPP switch after a test that flips it."""
    state = cv2.ipp.useIPP()
    yield
    cv2.ipp.setUseIPP(state)


def differences(expected, ours):
    """(max, mean) grey levels between the 8-bit outputs (``np.uint8`` of the reference's, `to_uint8` of ours) and the
    largest difference in grey levels before that truncation."""
    expected = np.stack(expected)
    diff = np.abs(np.uint8(expected).astype(np.int16) - to_uint8(ours).astype(np.int16))
    before = np.abs(expected - ours.permute(0, 2, 3, 1).double().numpy() * 255).max()
    return int(diff.max()), float(diff.mean()), float(before)


def agree(rows) -> bool:
    """Within 1 grey level on 8 bits and, before truncation, within 1e-4 levels (float32's rounding of the output is
    7.6e-6 levels at 255): the same computation, not merely a close one."""
    return all(worst <= 1 and before < 1e-4 for worst, _, before in rows.values())


def glass_offsets(seed: int, batch: int, severity: int):
    """The offsets `glass_blur` draws from ``torch.Generator().manual_seed(seed)``: per pass (B, n, n, 2) (dx, dy)."""
    _, delta, passes = GLASS['glass_blur'][severity - 1]
    generator = torch.Generator().manual_seed(seed)
    span = 224 - 2 * delta
    return [(torch.randint(2 * delta, (batch, span, span, 2), generator=generator) - delta).numpy()
            for _ in range(passes)]


def test_glass_blur_matches_the_reference_given_the_same_draws(reference, photos, monkeypatch):
    views, batch = photos
    rows = {}
    for severity in range(1, 6):
        delta = GLASS['glass_blur'][severity - 1][1]
        ours = glass_blur(batch, severity, torch.Generator().manual_seed(severity))
        offsets = glass_offsets(severity, len(views), severity)
        assert all(o.min() == -delta and o.max() == delta - 1 for o in offsets)   # randint(-d, d)'s whole range
        expected = []
        for image, view in enumerate(views):
            pending = iter([pair for o in offsets for pair in o[image].reshape(-1, 2).tolist()])

            def randint(low, high, size):
                assert (low, high, tuple(size)) == (-delta, delta, (2,))
                return next(pending)
            monkeypatch.setitem(reference, 'np', NumpyWith(types.SimpleNamespace(randint=randint)))
            expected.append(reference['glass_blur'](view, severity))
            assert next(pending, None) is None                 # every draw used, in order
        rows[severity] = differences(expected, ours)
    assert agree(rows), f'glass_blur: (max, mean, max before truncation) grey levels per severity: {rows}'


@pytest.mark.parametrize('size, delta', [((20, 31), 1), ((20, 31), 2), ((17, 12), 3), ((13, 13), 4), ((8, 8), 4)])
def test_glass_shuffle_is_the_sequential_loop_at_any_size(size, delta):
    """The reference's loop generalised to H x W (rows H - d .. d + 1): numpy's tuple "swap" of pixel views copies
    (h + dy, w + dx) into (h, w); `glass_shuffle` gives the same result without a loop over pixels."""
    height, width = size
    rng = np.random.default_rng(delta)
    images = rng.integers(0, 256, (2, height, width, 3)).astype(np.uint8)
    span = (max(height - 2 * delta, 0), max(width - 2 * delta, 0))
    offsets = rng.integers(-delta, delta, (2, *span, 2))
    expected = images.copy()
    for image, pending in zip(expected, offsets):
        pending = iter(pending.reshape(-1, 2).tolist())
        for h in range(height - delta, delta, -1):
            for w in range(width - delta, delta, -1):
                dx, dy = next(pending)
                image[h, w], image[h + dy, w + dx] = image[h + dy, w + dx], image[h, w]
    ours = glass_shuffle(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(offsets), delta)
    assert np.array_equal(ours.permute(0, 2, 3, 1).numpy(), expected)


@pytest.mark.parametrize('use_ipp', [True, False])
def test_spatter_matches_the_reference_given_the_same_draws(reference, photos, monkeypatch, ipp, use_ipp):
    """With IPP (x86 wheels, the default) and without it (OpenCV's own fixed-point distance transform)."""
    cv2.ipp.setUseIPP(use_ipp)
    views, batch = photos
    rows = {}
    for severity in range(1, 6):
        ours = spatter(batch, severity, torch.Generator().manual_seed(severity), fixed_point=not cv2.ipp.useIPP())
        noise = torch.randn((len(views), 224, 224), generator=torch.Generator().manual_seed(severity),
                            dtype=torch.float64).numpy()
        expected = []
        for image, view in enumerate(views):
            def normal(size, loc, scale, draw=noise[image]):
                assert tuple(size) == draw.shape and (loc, scale) == SPATTER['spatter'][severity - 1][:2]
                return loc + scale * draw                      # numpy's normal: loc + scale * standard normal
            monkeypatch.setitem(reference, 'np', NumpyWith(types.SimpleNamespace(normal=normal)))
            expected.append(reference['spatter'](view, severity))
        rows[severity] = differences(expected, ours)
    assert agree(rows), f'spatter: (max, mean, max before truncation) grey levels per severity: {rows}'


def liquid_layers(seed: int, size=(64, 80)) -> np.ndarray:
    """8-bit layers like spatter's (blurred noise, thresholded) plus plain noise, which exercises every Canny
    sector and many ties."""
    rng = np.random.default_rng(seed)
    layers = []
    for sigma in (2, 3):
        layer = skimage.filters.gaussian(rng.normal(0.65, 0.3, size), sigma=sigma)
        layer[layer < 0.68] = 0
        layers.append((layer * 255).astype(np.uint8))
    layers.append(rng.integers(0, 256, size).astype(np.uint8))
    layers.append((rng.integers(0, 3, size) * 100).astype(np.uint8))
    return np.stack(layers)


@pytest.mark.parametrize('use_ipp', [True, False])
@pytest.mark.parametrize('l2', [False, True])
def test_canny_is_opencvs(ipp, use_ipp, l2):
    cv2.ipp.setUseIPP(use_ipp)
    layers = liquid_layers(0)
    for low, high in [(50, 150), (20, 60.5)]:
        expected = np.stack([cv2.Canny(layer, low, high, L2gradient=l2) for layer in layers]) > 0
        ours = canny(torch.from_numpy(layers), low, high, l2_gradient=l2).numpy()
        assert np.array_equal(ours, expected), (low, high, (ours != expected).sum())


@pytest.mark.parametrize('use_ipp', [True, False])
def test_distance_transform_is_opencvs(ipp, use_ipp):
    """IPP (x86 wheels, the default) adds the chamfer steps in float32, OpenCV's own code in 16.16 fixed point:
    each is reproduced bit for bit, in full and up to a limit."""
    cv2.ipp.setUseIPP(use_ipp)
    rng = np.random.default_rng(1)
    sources = np.full((4, 48, 61), 255, np.uint8)
    sources[0][rng.random((48, 61)) < 0.01] = 0
    sources[1][rng.random((48, 61)) < 0.1] = 0
    sources[2][20, 30] = 0                                      # one zero pixel: distances up to the far corner
    # sources[3]: no zero pixel, OpenCV's initial value everywhere
    expected = np.stack([cv2.distanceTransform(source, cv2.DIST_L2, 5) for source in sources])
    nonzero = torch.from_numpy(sources > 0)
    full = distance_transform(nonzero, fixed_point=not use_ipp).numpy()
    assert full.dtype == np.float32 and np.array_equal(full, expected)
    capped = distance_transform(nonzero, limit=20, fixed_point=not use_ipp).numpy()
    assert np.array_equal(np.minimum(capped, 20), np.minimum(expected, 20))
    other = distance_transform(nonzero[:3], fixed_point=use_ipp).numpy()
    assert not np.array_equal(other, expected[:3])                       # they do differ, by a few ulps
    assert (np.abs(other - expected[:3]) <= 1e-5 * expected[:3]).all()


@pytest.mark.parametrize('use_ipp', [True, False])
def test_equalize_hist_and_blur_are_opencvs(ipp, use_ipp):
    cv2.ipp.setUseIPP(use_ipp)
    rng = np.random.default_rng(2)
    images = np.stack([rng.integers(0, 21, (30, 40)), rng.integers(3, 9, (30, 40)) * 7,
                       np.full((30, 40), 17), rng.integers(0, 256, (30, 40))]).astype(np.uint8)
    expected = np.stack([cv2.equalizeHist(image) for image in images])
    assert np.array_equal(equalize_hist(torch.from_numpy(images)).numpy(), expected)
    expected = np.stack([cv2.blur(image, (3, 3)) for image in images])
    assert np.array_equal(box_blur3(torch.from_numpy(images)).numpy(), expected)
    floats = (rng.random((3, 30, 40)) * 20).astype(np.float32)
    floats[0] = np.round(floats[0] * 5) / 5                      # values whose blur lands on exact levels
    expected = np.stack([cv2.blur(image, (3, 3)) for image in floats])
    assert np.array_equal(box_blur3(torch.from_numpy(floats)).numpy(), expected)


def test_spatter_without_liquid_leaves_the_image_water_adds_and_mud_covers():
    """No pixel above the threshold: the reference divides 0 by 0 (NaN); here the image is left as it is."""
    from timm_rspc.corruptions.spatter import _water
    pixels = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_water(pixels, torch.zeros(2, 40, 40, dtype=torch.float64), 0.6, False), pixels)
    water, mud = (spatter(pixels, s, torch.Generator().manual_seed(1)) - pixels for s in (2, 5))
    assert (water >= 0).all() and water.amax() > 0.1            # water only adds turquoise
    changed = mud.abs().sum(1) > 0
    assert changed.any() and not changed.all()                   # mud covers some blobs, not the whole image


@pytest.mark.parametrize('name, severity', [('glass_blur', 2), ('spatter', 2), ('spatter', 4)])
def test_gradients_reach_the_image(name, severity):
    """glass_blur's 8-bit truncation passes gradients straight through (the copies are a gather); spatter adds or
    mixes in colour with weights that do not depend on the image."""
    from timm_rspc.corruptions import corrupt
    pixels = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2).requires_grad_(True)
    out = corrupt(name, pixels, severity, torch.Generator().manual_seed(0))
    (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize('size', [(100, 150), (17, 9)])
def test_spatter_matches_the_reference_at_other_sizes(reference, photos, monkeypatch, size):
    """The reference's spatter has no fixed size: the same agreement on non-square crops, tiny ones included (where
    the water's layer can stay below its threshold: the reference then returns NaN, ours the image)."""
    views, batch = photos
    height, width = size
    crops = batch[:, :, :height, :width].contiguous()
    rows = {}
    for severity in range(1, 6):
        ours = spatter(crops, severity, torch.Generator().manual_seed(severity), fixed_point=not cv2.ipp.useIPP())
        noise = torch.randn((len(views), height, width), generator=torch.Generator().manual_seed(severity),
                            dtype=torch.float64).numpy()
        expected = []
        for image, view in enumerate(views):
            monkeypatch.setitem(reference, 'np', NumpyWith(types.SimpleNamespace(
                normal=lambda size, loc, scale, draw=noise[image]: loc + scale * draw)))
            with np.errstate(invalid='ignore'):
                result = reference['spatter'](np.asarray(view)[:height, :width], severity)
            if np.isnan(result).any():    # no liquid above the threshold: 0 / 0 in the reference, no spatter here
                assert np.isnan(result).all() and torch.equal(ours[image], crops[image])
                result = crops[image].permute(1, 2, 0).double().numpy() * 255
            expected.append(result)
        rows[severity] = differences(expected, ours)
    assert agree(rows), f'spatter at {size}: (max, mean, max before truncation) grey levels per severity: {rows}'
