"""The corruption model C, its straight-through top-rho mask, the noise blend and gradient reversal."""
import pytest
import torch
import torch.nn.functional as F

from timm_rspc.method import (
    AdversarialPatchCorruption, PatchCorruptionModel, blend_noise, draw_noise, normalized_pixel_range,
    patch_mask_to_pixels, reverse_gradient, top_rho_straight_through,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def quantile_mask(scores, ratio):
    """The authors' binarisation, written directly: keep what is above the per-row quantile."""
    return (scores > torch.quantile(scores.float(), ratio, dim=1, keepdim=True)).float()


@pytest.mark.parametrize('num_patches', [4, 16, 49, 196])
@pytest.mark.parametrize('ratio', [0.05, 0.1, 0.25, 0.5, 0.9])
def test_top_rho_equals_torch_quantile(num_patches, ratio):
    gen = torch.Generator().manual_seed(num_patches)
    distinct = torch.randn(6, num_patches, generator=gen)
    tied = torch.randint(0, 4, (6, num_patches), generator=gen).float()  # many ties at the threshold
    half = torch.randn(6, num_patches, generator=gen).half()  # the dtype of scores under fp16 autocast
    for scores in (distinct, tied, half):
        torch.testing.assert_close(top_rho_straight_through(scores, ratio), quantile_mask(scores, ratio),
                                   rtol=0, atol=0)


def test_top_rho_keeps_all_but_about_ratio_patches():
    scores = torch.randn(3, 196)
    mask = top_rho_straight_through(scores, 0.1)
    assert mask.dtype == torch.float32
    # rank 0.1 * 195 = 19.5: the 20 lowest scores of each row are corrupted
    assert mask.sum(1).tolist() == [176.0] * 3
    lowest = scores.argsort(1)[:, :20]
    assert mask.gather(1, lowest).sum() == 0


def test_straight_through_backward_is_hardtanh():
    scores = torch.randn(2, 16, requires_grad=True)
    upstream = torch.randn(2, 16) * 3
    top_rho_straight_through(scores, 0.25).backward(upstream)
    torch.testing.assert_close(scores.grad, F.hardtanh(upstream), rtol=0, atol=0)


def test_patch_mask_to_pixels_matches_fold():
    mask = torch.rand(2, 12)  # grid 3 x 4, row-major
    pixels = patch_mask_to_pixels(mask, (3, 4), 5)
    assert pixels.shape == (2, 1, 15, 20)
    # the authors' route: one constant 5x5 column per patch, folded back into the image
    columns = mask[:, None, :].expand(2, 25, 12)
    torch.testing.assert_close(pixels, F.fold(columns, (15, 20), 5, stride=5), rtol=0, atol=0)
    assert pixels[1, 0, 5:10, 15:20].eq(mask[1, 7]).all()  # patch (row 1, col 3)


def test_blend_noise_is_mask_product_then_clamp():
    lower, upper = normalized_pixel_range(MEAN, STD)
    x = torch.randn(2, 3, 8, 8) * 2  # partly outside the valid range, which the clamp must clip
    noise = torch.rand(2, 3, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.3).float().requires_grad_()
    out = blend_noise(x, mask, noise, lower, upper)
    expected = torch.max(torch.min(x * mask + noise * (1 - mask), upper), lower)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    inside = (expected > lower) & (expected < upper)
    torch.testing.assert_close(mask.grad, (grad * (x - noise) * inside).sum(1, keepdim=True))


def test_normalized_pixel_range_and_noise_modes():
    lower, upper = normalized_pixel_range(MEAN, STD)
    torch.testing.assert_close(lower.flatten(), -torch.tensor(MEAN) / torch.tensor(STD))
    torch.testing.assert_close(upper.flatten(), (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    x = torch.zeros(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    normalized = draw_noise(x, 'normalized', generator=gen)
    assert 0 <= normalized.min() and normalized.max() < 1
    pixel = draw_noise(x, 'pixel', lower, upper, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pixel, lower + normalized * (upper - lower))
    with pytest.raises(ValueError, match='Unknown noise mode'):
        draw_noise(x, 'gaussian')
    for mean, std in ((MEAN, (0.2, 0.0, 0.2)), ((0.5, float('nan'), 0.5), STD), (MEAN, (0.2, float('inf'), 0.2))):
        with pytest.raises(ValueError, match=r'mean and std must be finite numbers, std positive, got mean=\['):
            normalized_pixel_range(mean, std)


def test_corruption_model_layout_and_errors():
    model = PatchCorruptionModel(img_size=(32, 48), patch_size=16, ratio=0.1)
    assert model.grid_size == (2, 3) and model.num_patches == 6
    assert model.patch_embed.weight.shape == (1, 3, 16, 16) and model.patch_embed.bias is None
    assert model.fc.weight.shape == (6, 6) and model.fc.bias is None
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 6)
    with pytest.raises(ValueError, match=r'ratio \(--rspc-ratio\) must be a finite number in \(0, 1\), got 1.0'):
        PatchCorruptionModel(32, 16, ratio=1.0)
    with pytest.raises(ValueError, match=r'ratio \(--rspc-ratio\) must be a finite number in \(0, 1\), got 0.0'):
        PatchCorruptionModel(32, 16, ratio=0.0)
    with pytest.raises(ValueError, match='not divisible by the patch size 16'):
        PatchCorruptionModel(40, 16)
    with pytest.raises(ValueError, match='sizes must be positive, got image -32x-32, patch 16'):
        PatchCorruptionModel(-32, 16)
    with pytest.raises(ValueError, match='sizes must be positive, got image 32x32, patch 0'):
        PatchCorruptionModel(32, 0)
    with pytest.raises(ValueError, match='built for 32x48 inputs'):
        model(torch.randn(2, 3, 32, 32))


def test_adversarial_corruption_reference_and_reversed_gradient():
    torch.manual_seed(0)
    model = PatchCorruptionModel(32, 8, ratio=0.25)
    corruption = AdversarialPatchCorruption(model, MEAN, STD)
    x = torch.randn(3, 3, 32, 32)
    noise = torch.rand_like(x)
    out = corruption(x, noise=noise)
    # straightforward reference: quantile mask, nearest upsampling, product blend, min/max clamp
    scores = model.fc(F.gelu(F.conv2d(x, model.patch_embed.weight, stride=8)).flatten(1))
    mask = quantile_mask(scores, 0.25)
    pixel_mask = F.interpolate(mask.view(3, 1, 4, 4), scale_factor=8, mode='nearest')
    lower, upper = normalized_pixel_range(MEAN, STD)
    expected = torch.max(torch.min(x * pixel_mask + noise * (1 - pixel_mask), upper), lower)
    torch.testing.assert_close(out.patch_mask, mask, rtol=0, atol=0)
    torch.testing.assert_close(out.images, expected, rtol=0, atol=0)
    torch.testing.assert_close(out.occluded_fraction(), torch.tensor(1 - mask.mean().item()))
    # C receives minus the gradient of what follows it
    weights = torch.randn_like(x)
    (out.images * weights).sum().backward()
    ours = model.fc.weight.grad.clone()
    model.zero_grad()
    blend = x * pixel_mask + noise * (1 - pixel_mask)
    inside = ((blend > lower) & (blend < upper)).float()
    # d(out)/d(patch mask): summed over the patch's pixels and channels; then the straight-through hardtanh
    grad_mask = (weights * inside * (x - noise)).view(3, 3, 4, 8, 4, 8).sum((1, 3, 5)).view(3, 16)
    torch.autograd.backward(scores, F.hardtanh(grad_mask))
    torch.testing.assert_close(ours, -model.fc.weight.grad, rtol=1e-5, atol=1e-6)


def test_noise_generator_and_explicit_noise_are_reproducible():
    model = PatchCorruptionModel(32, 16)
    corruption = AdversarialPatchCorruption(model, MEAN, STD, noise='pixel')
    x = torch.randn(2, 3, 32, 32)
    a = corruption(x, generator=torch.Generator().manual_seed(5)).images
    b = corruption(x, generator=torch.Generator().manual_seed(5)).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match='noise must be shaped like the images'):
        corruption(x, noise=torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"noise \(--rspc-noise\) must be one of normalized, pixel, got 'gaussian'"):
        AdversarialPatchCorruption(model, MEAN, STD, noise='gaussian')


def test_gradient_reversal():
    x = torch.randn(5, requires_grad=True)
    y = reverse_gradient(x, scale=2.0)
    torch.testing.assert_close(y, x)
    (y * torch.arange(5.)).sum().backward()
    torch.testing.assert_close(x.grad, -2.0 * torch.arange(5.))
