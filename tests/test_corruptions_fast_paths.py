"""The CPU-speed formulations of `timm_rspc.corruptions` give what the direct ones give: the float64 matrix JPEG
against libjpeg-turbo's butterflies on int64 (the MPS path), the disk filter (running sums or FFT) against the direct
correlation, the buffered zoom sum against the zooms one by one, the float border folding against `border_index`,
and the paths with and without autograd against each other. (Fidelity to the reference libraries themselves:
test_corruptions.py and test_corruptions_reference.py.)"""
import pytest
import torch

from timm_rspc.corruptions import SEVERITIES, corrupt
from timm_rspc.corruptions import jpeg
from timm_rspc.corruptions.primitives import (
    _fold, border_index, box_resize, clipped_zoom, clipped_zoom_sum, disk_filter, disk_kernel, filter2d,
)


def planes(height: int, width: int) -> torch.Tensor:
    """8-bit planes with the extremes JPEG coding meets: noise, flat black and white, a checkerboard, ramps."""
    noise = torch.randint(0, 256, (2, height, width), generator=torch.Generator().manual_seed(0))
    flat = torch.stack([torch.zeros(height, width), torch.full((height, width), 255.)]).long()
    checker = ((torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 * 255)[None]
    ramp = (torch.arange(width) * 255 // max(width - 1, 1)).expand(height, width)[None]
    return torch.cat([noise, flat, checker, ramp]).float()


@pytest.mark.parametrize('quality', [1, 7, 15, 25, 50, 90, 100])
@pytest.mark.parametrize('size', [(8, 8), (16, 24), (64, 40)])
def test_jpeg_float64_matrix_coding_is_the_int64_butterflies(quality, size):
    samples = planes(*size)
    for table, reciprocals in zip(jpeg._quantization_tables(quality), jpeg._reciprocals_of(quality)):
        expected = jpeg._code_plane_int64(samples, table, reciprocals)
        assert torch.equal(jpeg._code_plane_float64(samples, table, reciprocals), expected)


@pytest.mark.parametrize('severity', range(1, 6))
@pytest.mark.parametrize('size', [(224, 224), (31, 45), (5, 7), (1, 3)])
def test_disk_filter_is_the_direct_correlation(severity, size):
    radius, alias_blur = SEVERITIES['defocus_blur'][severity - 1]
    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(severity))
    expected = filter2d(x, disk_kernel(radius, alias_blur).double())
    # the dropped remainder taps are K's own float32 rounding: at most 6e-7 in all
    torch.testing.assert_close(disk_filter(x, radius, alias_blur), expected, rtol=0, atol=1e-7)
    # (C, H, W) takes the running sums and remainder taps also where 4-D images take the FFT (severities 4, 5)
    torch.testing.assert_close(disk_filter(x[0], radius, alias_blur), expected[0], rtol=0, atol=1e-7)


def test_clipped_zoom_sum_is_the_sum_of_the_zooms_with_and_without_autograd():
    zooms = SEVERITIES['zoom_blur'][4]
    for size in ((224, 224), (31, 45)):
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
        expected = torch.zeros_like(x)
        for zoom in zooms:
            expected = expected + clipped_zoom(x, zoom)
        assert torch.equal(clipped_zoom_sum(x, zooms), expected)
        assert torch.equal(clipped_zoom_sum(x.clone().requires_grad_(), zooms).detach(), expected)


def test_float_border_folding_is_border_index():
    for mode in ('nearest', 'reflect', 'reflect101'):
        for size in (1, 2, 3, 7, 224):
            index = torch.arange(-5 * size - 3, 6 * size + 4)
            assert torch.equal(_fold(index.float(), size, mode).long(), border_index(index, size, mode))


@pytest.mark.parametrize('name', ['defocus_blur', 'zoom_blur', 'pixelate', 'contrast', 'elastic_transform',
                                  'gaussian_noise', 'speckle_noise', 'impulse_noise', 'frost'])
def test_paths_with_and_without_autograd_agree(name):
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    plain = corrupt(name, x, 3, torch.Generator().manual_seed(2))
    tracked = corrupt(name, x.clone().requires_grad_(), 3, torch.Generator().manual_seed(2))
    assert torch.equal(tracked.detach(), plain)
    with torch.no_grad():
        assert torch.equal(corrupt(name, x.clone().requires_grad_(), 3, torch.Generator().manual_seed(2)), plain)


def test_box_resize_does_not_write_into_its_input():
    x = torch.rand(1, 3, 30, 20, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    box_resize(x, (30, 20))   # no pass: the rounded copy is returned
    box_resize(x, (12, 7))
    assert torch.equal(x, before)
