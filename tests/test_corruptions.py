"""`timm_rspc.corruptions`: its primitives against the libraries the reference uses (Pillow's BOX resize and JPEG,
scikit-image's gaussian) at many sizes, and the torch contract (any size, batching, generators, gradients, errors).

The corruptions against the reference implementation itself: ``test_corruptions_reference.py``.
"""
import io

import numpy as np
import PIL.Image as PIL_Image
import pytest
import skimage.filters
import torch

from timm_rspc.corruptions import (
    CATEGORIES, CORRUPTIONS, FIDELITY, SEVERITIES, box_resize, corrupt, gaussian_filter, per_image_generators, plasma_fractal,
)


def needs_reference_data(name: str) -> None:
    """frost's photographs come from the reference's sdist (pip, cached): skip only if they cannot be had."""
    if name == 'frost':
        from timm_rspc.corruptions.reference_data import frost_images
        try:
            frost_images()
        except RuntimeError as error:
            if 'failed' not in str(error):
                raise
            pytest.skip(f'the frost photographs are not cached and could not be fetched: {str(error)[:300]}')


def random_8bit(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize('in_size, out_size', [
    ((224, 224), (134, 134)), ((224, 224), (89, 89)), ((134, 134), (224, 224)), ((67, 67), (224, 224)),
    ((6, 9), (4, 6)),          # scale 1.5: pixel centres exactly on window edges
    ((30, 20), (12, 8)),       # scale 2.5: windows of 2 and 3 pixels, ties of 2-pixel means
    ((50, 41), (5, 4)),        # windows of 10 pixels (Pillow's fixed-point weights round down)
    ((7, 13), (3, 5)), ((5, 3), (12, 7)), ((32, 32), (24, 24)), ((32, 48), (32, 12)), ((1, 5), (3, 2)),
])
def test_box_resize_is_pillows_box_resize(in_size, out_size):
    images = random_8bit((3, *in_size, 3))
    expected = np.stack([np.asarray(PIL_Image.fromarray(image).resize(out_size[::-1], PIL_Image.BOX))
                         for image in images])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    ours = (box_resize(pixels, out_size) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, expected), np.abs(expected.astype(int) - ours.astype(int)).max()  # bit-identical


@pytest.mark.parametrize('mode, truncate', [('nearest', 4.0), ('reflect', 3.0)])
@pytest.mark.parametrize('size', [(224, 224), (32, 32), (20, 35), (7, 5)])
@pytest.mark.parametrize('sigma', [0.5, 1, 2.5, 6, 19.52])
def test_gaussian_filter_is_scikit_images_gaussian(size, sigma, mode, truncate):
    images = np.random.default_rng(1).random((2, *size, 3))
    expected = np.stack([skimage.filters.gaussian(image, sigma=sigma, mode=mode, truncate=truncate, channel_axis=-1)
                         for image in images])
    ours = gaussian_filter(torch.from_numpy(images).permute(0, 3, 1, 2), sigma, truncate, mode)
    ours = ours.permute(0, 2, 3, 1).numpy()
    assert np.abs(expected - ours).max() < 1e-12   # float64 in, float64 out: the same arithmetic up to rounding


@pytest.mark.parametrize('name', sorted(CORRUPTIONS))
def test_every_corruption_keeps_shape_dtype_and_range_at_any_size(name):
    needs_reference_data(name)
    for size in [(224, 224), (32, 32), (64, 48), (5, 3)]:
        pixels = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
        for severity in range(1, 6):
            out = corrupt(name, pixels, severity, torch.Generator().manual_seed(0))
            assert out.shape == pixels.shape and out.dtype == pixels.dtype, (severity, size)
            assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all(), (severity, size)
    assert set(CORRUPTIONS) == set(CATEGORIES) == set(FIDELITY) == set(SEVERITIES)


@pytest.mark.parametrize('name', sorted(CORRUPTIONS))
def test_batch_is_corrupted_image_by_image_and_draws_follow_the_generator(name):
    needs_reference_data(name)
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = corrupt(name, pixels, 3, torch.Generator().manual_seed(7))
    assert torch.equal(first, corrupt(name, pixels, 3, torch.Generator().manual_seed(7)))
    if FIDELITY[name] == 'exact':   # deterministic: image by image as in a batch
        one_by_one = torch.cat([corrupt(name, image[None], 3) for image in pixels])
        torch.testing.assert_close(first, one_by_one, rtol=0, atol=1e-6)
    else:                           # random: fresh draws per image, so no two images get the same noise
        residual = (first - pixels).flatten(1)
        assert not torch.equal(residual[0], residual[1])


@pytest.mark.parametrize('name', sorted(CORRUPTIONS))
def test_per_image_generators_corrupt_an_image_the_same_in_any_batch(name):
    """One generator per image: image i draws only from generator i, so its corruption does not depend on its batch,
    its position in it or the batch size (what a resumable, distributed corrupted evaluation relies on)."""
    needs_reference_data(name)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seeds = [11, 12, 13]
    batched = corrupt(name, pixels, 4, per_image_generators(seeds))
    alone = torch.cat([corrupt(name, pixels[i:i + 1], 4, per_image_generators(seeds[i:i + 1])) for i in range(3)])
    reordered = corrupt(name, pixels.flip(0), 4, per_image_generators(seeds[::-1])).flip(0)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(batched, reordered, rtol=0, atol=1e-6)
    if FIDELITY[name] != 'exact':   # and the draws are the generators': other seeds, other corruption
        assert not torch.equal(batched, corrupt(name, pixels, 4, per_image_generators([21, 22, 23])))


def test_one_generator_per_image_is_checked():
    pixels = torch.rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match='Got 2 generators for a batch of 3 images'):
        corrupt('gaussian_noise', pixels, 1, per_image_generators([1, 2]))


@pytest.mark.parametrize('name', [
    'defocus_blur', 'zoom_blur', 'gaussian_blur', 'pixelate', 'brightness', 'contrast', 'fog', 'saturate',
    'elastic_transform'])
def test_deterministic_parts_are_differentiable(name):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    pixels.requires_grad_(True)
    out = corrupt(name, pixels, 2, torch.Generator().manual_seed(0))
    (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['zoom_blur', 'pixelate', 'defocus_blur', 'gaussian_blur'])
def test_constants_cached_during_an_evaluation_serve_a_differentiable_call(name):
    """An evaluation (``torch.inference_mode``) may build the cached taps / matrices first; the sensitivity analysis's
    differentiable call after it must still work (an inference tensor cannot be saved for backward)."""
    size = 40 + sorted(CORRUPTIONS).index(name)   # a size no other test caches first
    with torch.inference_mode():
        corrupt(name, torch.rand(1, 3, size, size), 2)
    pixels = torch.rand(1, 3, size, size, requires_grad=True)
    corrupt(name, pixels, 2).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_gaussian_filter_and_box_resize_gradients_are_exact():
    x = torch.rand(1, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_filter(t, 1.5), (x,))
    # box_resize rounds to 8 bits; its gradient is the resampling matrix's (straight through the rounding)
    from timm_rspc.corruptions.primitives import _box_resize_matrix
    box_resize(x, (5, 7)).sum().backward()
    expected = _box_resize_matrix(9, 5).sum(dim=0)   # d sum(rows @ x) / dx: the column sums of the matrix
    torch.testing.assert_close(x.grad, expected.view(1, 1, 9, 1).expand(1, 2, 9, 7))


def test_plasma_fractal_is_in_unit_range_and_independent_per_image():
    maps = plasma_fractal(3, 64, 2, torch.Generator().manual_seed(0))
    assert maps.shape == (3, 64, 64)
    assert torch.allclose(maps.amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3))
    assert not torch.equal(maps[0], maps[1])
    with pytest.raises(ValueError, match='power of two'):
        plasma_fractal(1, 48)


@pytest.mark.parametrize('size', [(16, 16), (32, 48), (64, 224), (1, 1), (2, 3), (5, 6), (17, 33), (31, 225)])
@pytest.mark.parametrize('quality', [1, 7, 25, 50, 85, 100])
def test_jpeg_round_trip_is_pillows(size, quality):
    from timm_rspc.corruptions import jpeg_round_trip
    images = random_8bit((2, *size, 3), seed=quality)
    images[1] = np.linspace(0, 255, size[1], dtype=np.uint8)[None, :, None]   # a smooth ramp as well as noise
    expected = []
    for image in images:
        buffer = io.BytesIO()
        PIL_Image.fromarray(image).save(buffer, 'JPEG', quality=quality)
        expected.append(np.asarray(PIL_Image.open(buffer)))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    ours = (jpeg_round_trip(pixels, quality) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, np.stack(expected)), np.abs(ours.astype(int) - np.stack(expected)).max()


def test_frost_draws_cover_the_references_ranges():
    from timm_rspc.corruptions.imagenet_c import _frost_draws
    sizes = torch.tensor([[600, 900], [315, 560], [315, 560], [350, 527], [495, 660], [323, 485]])
    index, top, left = _frost_draws(20000, 224, 224, sizes, torch.Generator().manual_seed(0), 'cpu')
    counts = torch.bincount(index, minlength=6)
    assert counts[5] == 0 and (counts[:5] - 4000).abs().max() < 300   # the reference's randint(5): never the sixth
    room = sizes[index] - 224
    assert (top >= 0).all() and (top < room[:, 0]).all() and (left >= 0).all() and (left < room[:, 1]).all()
    assert (top == room[:, 0] - 1).any() and (top == 0).any()      # both ends of randint(0, side - 224) reached
    with pytest.raises(ValueError, match='images up to 314 x 526 px, got 315 x 224'):
        _frost_draws(1, 315, 224, sizes, None, 'cpu')


def test_errors_name_the_choices():
    pixels = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='choose from gaussian_noise'):
        corrupt('snowflakes', pixels)
    with pytest.raises(ValueError, match='1..5'):
        corrupt('contrast', pixels, severity=6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', sorted(CORRUPTIONS))
def test_cuda_matches_cpu(name):
    needs_reference_data(name)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cpu = corrupt(name, pixels, 3, torch.Generator().manual_seed(0))
    cuda = corrupt(name, pixels.cuda(), 3, torch.Generator(device='cuda').manual_seed(0))
    if FIDELITY[name] == 'exact':
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1.5 / 255)
    else:
        assert cuda.shape == cpu.shape and cuda.min() >= 0 and cuda.max() <= 1
