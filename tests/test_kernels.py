"""The Triton kernels against their PyTorch references, on CPU under Triton's interpreter.

`tests/conftest.py` switches the interpreter on before Triton is first imported; the method itself dispatches to the
kernels for CUDA tensors only, so the rest of the suite is unaffected. bf16 is not tested
here: the interpreter is known to return wrong bf16 results.
"""
import pytest
import torch

triton = pytest.importorskip('triton')
if not triton.knobs.runtime.interpret:
    pytest.skip('Triton was imported before TRITON_INTERPRET=1 was set (see tests/conftest.py); no GPU to run on',
                allow_module_level=True)

from timm_rspc.kernels import use_kernels  # noqa: E402
from timm_rspc.kernels.paired_distance import fused_paired_mse  # noqa: E402
from timm_rspc.kernels.patch_noise import draw_seed, fused_patch_noise  # noqa: E402
from timm_rspc.method.alignment import paired_mse  # noqa: E402
from timm_rspc.method.corruption import blend_noise, normalized_pixel_range, patch_mask_to_pixels  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _reference_corruption(x, keep, noise, patch_size, lower, upper):
    grid = (x.shape[2] // patch_size, x.shape[3] // patch_size)
    return blend_noise(x, patch_mask_to_pixels(keep, grid, patch_size), noise.to(x.dtype), lower, upper)


def _inputs(dtype, batch=3, height=12, width=20, patch_size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Values past the valid range on both sides, so that the clamp (and its gradient mask) matters.
    x = (torch.randn(batch, 3, height, width, generator=gen) * 2.).to(dtype)
    num_patches = (height // patch_size) * (width // patch_size)
    keep = (torch.rand(batch, num_patches, generator=gen) > 0.3).float()
    noise = torch.rand(batch, 3, height, width, generator=gen).to(dtype)
    lower, upper = normalized_pixel_range(MEAN, STD)
    return x, keep, noise, lower, upper


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'sliced'])
def test_patch_noise_equals_reference_bit_for_bit(dtype, layout):
    x, keep, noise, lower, upper = _inputs(dtype)
    if layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    elif layout == 'sliced':
        x = torch.cat([x, x], dim=3)[..., ::2]  # every other column of a wider image: non-contiguous
        assert not x.is_contiguous()
    x_ref = x.detach().clone().requires_grad_(True)
    keep_ref = keep.clone().requires_grad_(True)
    expected = _reference_corruption(x_ref, keep_ref, noise, 4, lower, upper)
    x_k = x.detach().clone().requires_grad_(True)
    keep_k = keep.clone().requires_grad_(True)
    got = fused_patch_noise(x_k, keep_k, 4, lower, upper, noise=noise)
    assert got.dtype == dtype and torch.equal(got, expected)

    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected.backward(grad_out)
    got.backward(grad_out)
    assert torch.equal(x_k.grad, x_ref.grad)
    assert keep_k.grad.dtype == torch.float32
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=5e-2)
    torch.testing.assert_close(keep_k.grad, keep_ref.grad, **tol)
    # Every patch reached by the clamp region gets a gradient: the check above is not comparing zeros.
    assert keep_ref.grad.abs().sum() > 0


def test_patch_noise_gradcheck_float64():
    x, keep, noise, lower, upper = _inputs(torch.float64, batch=2, height=4, width=6, patch_size=2)
    x.requires_grad_(True)
    keep = keep.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x_, k_: fused_patch_noise(x_, k_, 2, lower, upper, noise=noise), (x, keep), eps=1e-6, atol=1e-6,
        fast_mode=True)


def test_in_kernel_noise_range_uniformity_and_seed():
    x = torch.zeros(4, 3, 64, 64)
    corrupt_all = torch.zeros(4, 16)
    wide = torch.full((1, 3, 1, 1), -10.), torch.full((1, 3, 1, 1), 10.)  # no clamping: the output is the noise
    seed = draw_seed(x.device, torch.Generator().manual_seed(7))
    noise = fused_patch_noise(x, corrupt_all, 16, *wide, seed=seed)
    assert 0. <= noise.min() and noise.max() < 1.
    # 49,152 draws: every tenth of [0, 1) holds 10% of them to within 0.5 points (binomial sd 0.14 points).
    counts = torch.histc(noise, bins=10, min=0., max=1.) / noise.numel()
    torch.testing.assert_close(counts, torch.full((10,), 0.1), rtol=0, atol=5e-3)
    # Same seed, same noise, whatever the memory layout; another seed, other noise.
    again = fused_patch_noise(x.to(memory_format=torch.channels_last), corrupt_all, 16, *wide, seed=seed.clone())
    assert torch.equal(again, noise)
    other = fused_patch_noise(x, corrupt_all, 16, *wide, seed=seed + 1)
    assert (other != noise).float().mean() > 0.99

    lower, upper = normalized_pixel_range(MEAN, STD)
    pixel = fused_patch_noise(x, corrupt_all, 16, lower, upper, seed=seed, noise_mode='pixel')
    assert torch.all(pixel >= lower) and torch.all(pixel <= upper)
    # Pixel noise is the same uniform draw mapped to [lower, upper] per channel.
    torch.testing.assert_close(pixel, lower + noise * (upper - lower))


def test_in_kernel_noise_backward_equals_reference_with_that_noise():
    x, keep, _, lower, upper = _inputs(torch.float32)
    seed = draw_seed(x.device, torch.Generator().manual_seed(3))
    wide = torch.full((1, 3, 1, 1), -10.), torch.full((1, 3, 1, 1), 10.)
    noise = fused_patch_noise(torch.zeros_like(x), torch.zeros_like(keep), 4, *wide, seed=seed)
    x_k, keep_k = x.clone().requires_grad_(True), keep.clone().requires_grad_(True)
    x_r, keep_r = x.clone().requires_grad_(True), keep.clone().requires_grad_(True)
    got = fused_patch_noise(x_k, keep_k, 4, lower, upper, seed=seed)
    expected = _reference_corruption(x_r, keep_r, noise, 4, lower, upper)
    assert torch.equal(got, expected)
    grad_out = torch.randn_like(got)
    got.backward(grad_out)
    expected.backward(grad_out)
    assert torch.equal(x_k.grad, x_r.grad)
    torch.testing.assert_close(keep_k.grad, keep_r.grad, rtol=1e-5, atol=1e-5)


def test_patch_noise_rejects_bad_shapes():
    x, keep, noise, lower, upper = _inputs(torch.float32)
    with pytest.raises(ValueError, match='multiples of the patch size 7'):
        fused_patch_noise(x, keep, 7, lower, upper, noise=noise)
    with pytest.raises(ValueError, match=r'patch_mask must be shaped \(3, 15\)'):
        fused_patch_noise(x, keep[:, :4], 4, lower, upper, noise=noise)
    with pytest.raises(ValueError, match='either an explicit noise tensor or a seed'):
        fused_patch_noise(x, keep, 4, lower, upper)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('shape', [(6, 5, 7), (4, 3001), (2, 17, 3, 3)])
def test_paired_mse_equals_reference(dtype, shape):
    features = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    ref_in = features.clone().requires_grad_(True)
    got_in = features.clone().requires_grad_(True)
    expected = paired_mse(ref_in)
    got = fused_paired_mse(got_in)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    (expected * 3.).backward()
    (got * 3.).backward()
    assert got_in.grad.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got_in.grad, ref_in.grad, **tol)


def test_paired_mse_non_contiguous_and_gradcheck():
    base = torch.randn(4, 9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features = base.transpose(1, 2)  # (4, 6, 9), non-contiguous
    torch.testing.assert_close(fused_paired_mse(features), paired_mse(features).double(), rtol=1e-6, atol=0)
    leaf = features.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fused_paired_mse, (leaf,), eps=1e-6, atol=1e-8, fast_mode=True)
    with pytest.raises(ValueError, match='even batch'):
        fused_paired_mse(torch.zeros(3, 4))


def test_dispatch_is_cuda_only(monkeypatch):
    assert not use_kernels(torch.zeros(1))
    monkeypatch.setenv('TIMM_RSPC_KERNELS', '0')
    assert not use_kernels(torch.zeros(1))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 2, 3, 1500)])
def test_attention_change_sums_equal_reference(dtype, shape):
    from timm_rspc.analysis.attention import attention_change_sums
    from timm_rspc.kernels.attention_change import fused_attention_change_sums
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(shape, generator=gen).mul(3).softmax(-1).to(dtype)
    corrupted = torch.randn(shape, generator=gen).mul(3).softmax(-1).to(dtype)
    clean[0, 0, 0] = 0.
    clean[0, 0, 0, 0] = 1.  # a one-hot row: xlogy's zeros
    keys = torch.rand(shape[0], shape[3], generator=gen) > 0.5
    queries = torch.rand(shape[0], shape[2], generator=gen) > 0.5
    expected = attention_change_sums(clean, corrupted, keys, queries)
    got = fused_attention_change_sums(clean.transpose(2, 3).contiguous().transpose(2, 3), corrupted, keys, queries)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=2e-6, atol=1e-9, msg=name)
    same = fused_attention_change_sums(clean, clean, keys, queries)
    assert same['js'] == 0 and torch.isclose(same['cosine'], same['rows'])
