"""Fused patch corruption: ``clamp(lerp(noise, x, upsample(mask)), lower, upper)`` in one pass, with its backward.

The PyTorch composition (the method's ``draw_noise``, ``patch_mask_to_pixels`` and ``blend_noise``, this kernel's
registered reference, see `timm_rspc.kernels.register_reference`) writes the noise, the pixel mask and the blend before
clamping: four passes over an image-sized tensor, plus as many in the backward. Here one program handles one patch of
one image: it reads the patch's mask value once, reads or generates the noise (Philox, counter = the pixel's index in a
contiguous (B, C, H, W) tensor, so the noise does not depend on the memory layout), blends, clamps and writes. The
backward recomputes the noise from the same seed instead of keeping it, and reduces the mask gradient of the patch in
the same program.

Given an explicit noise tensor, the forward equals the reference bit for bit in every dtype, and the input gradient
too; the mask gradient is a sum accumulated in float32 (the reference sums in the input dtype).
"""
import functools
import itertools
from typing import Iterator, Optional, Tuple

import torch
import triton
import triton.language as tl

from timm_rspc.kernels import guarded, references

__all__ = ['fused_patch_noise', 'draw_seed', 'check_cases']

_NOISE_MODES = {'normalized': 0, 'pixel': 1}


@triton.jit
def _noise_values(seed_ptr, noise_ptr, flat_idx, offsets_noise, c, lower, upper, valid,
                  HAS_NOISE: tl.constexpr, NOISE_MODE: tl.constexpr, ACC: tl.constexpr):
    if HAS_NOISE:
        noise = tl.load(noise_ptr + offsets_noise, mask=valid, other=0.).to(ACC)
    else:
        u = tl.rand(tl.load(seed_ptr), flat_idx).to(ACC)
        if NOISE_MODE == 1:
            noise = lower + u * (upper - lower)
        else:
            noise = u
    return noise


@triton.jit
def _patch_indices(pid_b, pid_n, grid_w, C, H, W, P: tl.constexpr, BLOCK: tl.constexpr):
    k = tl.arange(0, BLOCK)
    valid = k < C * P * P
    c = k // (P * P)
    row = pid_n // grid_w * P + (k // P) % P
    col = pid_n % grid_w * P + k % P
    flat_idx = ((pid_b * C + c) * H + row) * W + col
    return valid, c, row, col, flat_idx


@triton.jit
def _blend_patch(pid_b, pid_n, x_ptr, mask_ptr, noise_ptr, seed_ptr, lower_ptr, upper_ptr, C, H, W, grid_w,
                 num_patches, sxb, sxc, sxh, sxw, snb, snc, snh, snw, P: tl.constexpr, BLOCK: tl.constexpr,
                 HAS_NOISE: tl.constexpr, NOISE_MODE: tl.constexpr, ACC: tl.constexpr):
    """One patch's pixels blended with noise, before the clamp; the backward recomputes exactly this."""
    valid, c, row, col, flat_idx = _patch_indices(pid_b, pid_n, grid_w, C, H, W, P, BLOCK)
    keep = tl.load(mask_ptr + pid_b * num_patches + pid_n).to(ACC)
    lower = tl.load(lower_ptr + c, mask=valid, other=0.).to(ACC)
    upper = tl.load(upper_ptr + c, mask=valid, other=0.).to(ACC)
    x = tl.load(x_ptr + pid_b * sxb + c * sxc + row * sxh + col * sxw, mask=valid, other=0.).to(ACC)
    noise = _noise_values(seed_ptr, noise_ptr, flat_idx, pid_b * snb + c * snc + row * snh + col * snw,
                          c, lower, upper, valid, HAS_NOISE, NOISE_MODE, ACC)
    # torch.lerp's two-sided formula: exact at weight 0 (noise) and 1 (x).
    diff = x - noise
    blended = tl.where(keep < 0.5, noise + keep * diff, x - diff * (1. - keep))
    return valid, c, row, col, keep, lower, upper, diff, blended


@triton.jit
def _fused_patch_noise_fwd(
        x_ptr, mask_ptr, noise_ptr, seed_ptr, lower_ptr, upper_ptr, out_ptr,
        C, H, W, grid_w, num_patches,
        sxb, sxc, sxh, sxw, snb, snc, snh, snw, sob, soc, soh, sow,
        P: tl.constexpr, BLOCK: tl.constexpr, HAS_NOISE: tl.constexpr, NOISE_MODE: tl.constexpr,
        ACC: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    valid, c, row, col, keep, lower, upper, diff, blended = _blend_patch(
        pid_b, pid_n, x_ptr, mask_ptr, noise_ptr, seed_ptr, lower_ptr, upper_ptr, C, H, W, grid_w, num_patches,
        sxb, sxc, sxh, sxw, snb, snc, snh, snw, P, BLOCK, HAS_NOISE, NOISE_MODE, ACC)
    out = tl.minimum(tl.maximum(blended, lower), upper)
    tl.store(out_ptr + pid_b * sob + c * soc + row * soh + col * sow, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _fused_patch_noise_bwd(
        grad_ptr, x_ptr, mask_ptr, noise_ptr, seed_ptr, lower_ptr, upper_ptr, grad_x_ptr, grad_mask_ptr,
        C, H, W, grid_w, num_patches,
        sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw, snb, snc, snh, snw,
        P: tl.constexpr, BLOCK: tl.constexpr, HAS_NOISE: tl.constexpr, NOISE_MODE: tl.constexpr,
        NEEDS_GRAD_X: tl.constexpr, ACC: tl.constexpr, TIE: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    valid, c, row, col, keep, lower, upper, diff, blended = _blend_patch(
        pid_b, pid_n, x_ptr, mask_ptr, noise_ptr, seed_ptr, lower_ptr, upper_ptr, C, H, W, grid_w, num_patches,
        sxb, sxc, sxh, sxw, snb, snc, snh, snw, P, BLOCK, HAS_NOISE, NOISE_MODE, ACC)
    grad = tl.load(grad_ptr + pid_b * sgb + c * sgc + row * sgh + col * sgw, mask=valid, other=0.).to(ACC)
    # As torch.clamp's backward: the whole gradient strictly inside the range, TIE of it on a bound, none outside.
    on_bound = (blended == lower) | (blended == upper)
    grad = tl.where((blended > lower) & (blended < upper), grad, tl.where(on_bound, grad * TIE, 0.))
    grad = tl.where(valid, grad, 0.)
    if NEEDS_GRAD_X:
        offsets_x = ((pid_b * C + c) * H + row) * W + col
        tl.store(grad_x_ptr + offsets_x, (grad * keep).to(grad_x_ptr.dtype.element_ty), mask=valid)
    tl.store(grad_mask_ptr + pid_b * num_patches + pid_n, tl.sum(grad * diff, axis=0))


@functools.lru_cache(maxsize=None)
def _clamp_tie_factor() -> float:
    """The share of the gradient torch.clamp (tensor bounds) passes to a value lying exactly on a bound.

    PyTorch 2.14 passes half (as for a tie in ``maximum``); read once from torch itself, so that the kernel's backward
    stays equal to the reference on every supported release.
    """
    with torch.enable_grad():
        value = torch.zeros(1, requires_grad=True)
        torch.clamp(value, torch.zeros(1), torch.ones(1)).backward()
    return float(value.grad)


def _launch_shape(x: torch.Tensor, patch_size: int) -> Tuple[int, Tuple[int, int]]:
    block = triton.next_power_of_2(x.shape[1] * patch_size * patch_size)
    return block, (x.shape[0], (x.shape[2] // patch_size) * (x.shape[3] // patch_size))


class _FusedPatchNoise(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, patch_mask, lower, upper, noise, seed, patch_size, noise_mode):
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        mask = patch_mask.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
        # The reference clamps against the bounds rounded to the image dtype.
        lower = lower.reshape(-1).to(x.dtype).contiguous()
        upper = upper.reshape(-1).to(x.dtype).contiguous()
        has_noise = noise is not None
        noise_arg = noise if has_noise else x
        seed_arg = seed if seed is not None else mask
        out = _launch_forward(x, mask, lower, upper, noise_arg, seed_arg, has_noise, patch_size, noise_mode, acc)
        ctx.save_for_backward(x, mask, lower, upper, noise_arg, seed_arg)
        ctx.has_noise = has_noise
        ctx.patch_size = patch_size
        ctx.noise_mode = noise_mode
        ctx.acc = acc
        ctx.mask_dtype = patch_mask.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, mask, lower, upper, noise_arg, seed_arg = ctx.saved_tensors
        patch_size = ctx.patch_size
        batch, chans, height, width = x.shape
        needs_grad_x = ctx.needs_input_grad[0]

        def launch():
            block, grid = _launch_shape(x, patch_size)
            grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if needs_grad_x else None
            grad_mask = torch.empty_like(mask)
            _fused_patch_noise_bwd[grid](
                grad_out, x, mask, noise_arg, seed_arg, lower, upper, grad_x if needs_grad_x else grad_mask, grad_mask,
                chans, height, width, width // patch_size, grid[1],
                *grad_out.stride(), *x.stride(), *noise_arg.stride(),
                P=patch_size, BLOCK=block, HAS_NOISE=ctx.has_noise, NOISE_MODE=_NOISE_MODES[ctx.noise_mode],
                NEEDS_GRAD_X=needs_grad_x, ACC=ctx.acc, TIE=_clamp_tie_factor())
            return grad_x, grad_mask

        def reference():
            # The noise of the forward: given, or drawn again by the forward kernel (a blend with nothing kept).
            noise = noise_arg
            if not ctx.has_noise:
                wide = torch.full_like(lower, float('inf'))
                noise = _launch_forward(torch.zeros_like(x), torch.zeros_like(mask), -wide, wide, x, seed_arg, False,
                                        patch_size, 'normalized', ctx.acc)
                if ctx.noise_mode == 'pixel':
                    noise = lower.view(1, -1, 1, 1) + noise * (upper - lower).view(1, -1, 1, 1)
            with torch.enable_grad():
                x_leaf = x.detach().requires_grad_(needs_grad_x)
                mask_leaf = mask.detach().requires_grad_(True)
                out = _reference_blend(x_leaf, mask_leaf, lower, upper, noise, patch_size)
                grads = torch.autograd.grad(out, [x_leaf, mask_leaf] if needs_grad_x else [mask_leaf], grad_out)
            return (grads[0] if needs_grad_x else None), grads[-1]
        grad_x, grad_mask = guarded('patch_noise', x.device, launch, reference)
        return grad_x, grad_mask.to(ctx.mask_dtype), None, None, None, None, None, None


def _launch_forward(x, mask, lower, upper, noise_arg, seed_arg, has_noise, patch_size, noise_mode, acc):
    """The forward kernel: ``mask`` float32 (float64 for float64 images), ``lower`` / ``upper`` flat in ``x``'s
    dtype; ``noise_arg`` is read only with ``has_noise``, ``seed_arg`` only without."""
    block, grid = _launch_shape(x, patch_size)
    out = torch.empty_like(x)
    _fused_patch_noise_fwd[grid](
        x, mask, noise_arg, seed_arg, lower, upper, out,
        x.shape[1], x.shape[2], x.shape[3], x.shape[3] // patch_size, grid[1],
        *x.stride(), *noise_arg.stride(), *out.stride(),
        P=patch_size, BLOCK=block, HAS_NOISE=has_noise, NOISE_MODE=_NOISE_MODES[noise_mode], ACC=acc)
    return out


def _reference_blend(x, patch_mask, lower, upper, noise, patch_size):
    """The PyTorch composition the kernel replaces, from the registered ``patch_mask_to_pixels`` and ``blend_noise``:
    the fallback and the check cases' reference."""
    functions = references('patch_noise')
    grid = (x.shape[2] // patch_size, x.shape[3] // patch_size)
    bounds = lower.reshape(1, -1, 1, 1), upper.reshape(1, -1, 1, 1)
    pixel_mask = functions.patch_mask_to_pixels(patch_mask, grid, patch_size)
    return functions.blend_noise(x, pixel_mask, noise.to(x.dtype), *bounds)


def _reference(x, patch_mask, lower, upper, noise, patch_size, noise_mode):
    """The PyTorch path for a launch that failed. Without explicit noise it draws ``torch.rand`` noise (the in-kernel
    noise of that seed cannot be drawn without the kernel), so that one batch's noise is not reproducible."""
    if noise is None:
        noise = references('patch_noise').draw_noise(x.detach(), noise_mode, lower.reshape(1, -1, 1, 1),
                                                    upper.reshape(1, -1, 1, 1))
    return _reference_blend(x, patch_mask, lower, upper, noise, patch_size)


def draw_seed(device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A Philox seed for the in-kernel noise, drawn on ``device`` from ``generator`` (no host synchronisation)."""
    return torch.randint(0, 2 ** 31 - 1, (1,), device=device, generator=generator, dtype=torch.int64)


def fused_patch_noise(
        x: torch.Tensor,
        patch_mask: torch.Tensor,
        patch_size: int,
        lower: torch.Tensor,
        upper: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        seed: Optional[torch.Tensor] = None,
        noise_mode: str = 'normalized',
) -> torch.Tensor:
    """Corrupt the patches whose ``patch_mask`` (B, N) entry is 0 with uniform noise, clamped to [lower, upper].

    Equals ``blend_noise(x, patch_mask_to_pixels(patch_mask, grid, patch_size), noise, lower, upper)``, differentiable
    in ``x`` and ``patch_mask``. Without ``noise``, the noise is drawn in the kernel from ``seed`` (a one-element int64
    tensor on ``x``'s device, see `draw_seed`), as U[0, 1) (``normalized``) or U[0, 1) pixels normalised to
    ``[lower, upper]`` (``pixel``), and recomputed in the backward rather than stored.
    """
    if x.ndim != 4 or x.shape[2] % patch_size or x.shape[3] % patch_size:
        raise ValueError(
            f'Expected images (B, C, H, W) with H and W multiples of the patch size {patch_size}, got {tuple(x.shape)}.')
    num_patches = (x.shape[2] // patch_size) * (x.shape[3] // patch_size)
    if tuple(patch_mask.shape) != (x.shape[0], num_patches):
        raise ValueError(f'patch_mask must be shaped {(x.shape[0], num_patches)}, got {tuple(patch_mask.shape)}.')
    if noise is None and seed is None:
        raise ValueError('Pass either an explicit noise tensor or a seed for the in-kernel noise.')
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f'noise must be shaped like the images {tuple(x.shape)}, got {tuple(noise.shape)}.')
    if noise_mode not in _NOISE_MODES:
        raise ValueError(f'Unknown noise mode {noise_mode!r}; choose one of {tuple(_NOISE_MODES)}.')
    if noise is not None:
        noise = noise.detach().to(x.dtype)
    return guarded('patch_noise', x.device,
                   lambda: _FusedPatchNoise.apply(x, patch_mask, lower, upper, noise, seed, patch_size, noise_mode),
                   lambda: _reference(x, patch_mask, lower, upper, noise, patch_size, noise_mode))


def check_cases(device: torch.device, dtypes: Tuple[torch.dtype, ...], patch_size: int = 16) -> Iterator:
    """Every launch configuration `fused_patch_noise` has (see `timm_rspc.kernels.checks`): image dtype x layout x
    noise (explicit or in-kernel) x noise mode x input gradient or not, forward and backward, on a 2 x 2 patch grid.

    The first case is the one the method's step launches (in-kernel noise, float32 images); it is the self-check.
    """
    from timm_rspc.kernels.checks import CheckCase, leaf
    # Where pixels 0 and 1 land after ImageNet normalisation, rounded (any per-channel bounds will do).
    lower = torch.tensor([-2.118, -2.036, -1.804]).reshape(1, 3, 1, 1)
    upper = torch.tensor([2.249, 2.429, 2.640]).reshape(1, 3, 1, 1)
    size = 2 * patch_size  # a 2 x 2 patch grid
    configs = itertools.product(dtypes, (False, True), (True, False), ('contiguous', 'channels_last'),
                                tuple(_NOISE_MODES))
    for dtype, explicit, needs_grad_x, layout, noise_mode in configs:
        gen = torch.Generator().manual_seed(0)
        # Values past the valid range on both sides, so that the clamp and its gradient matter.
        x = (torch.randn(2, 3, size, size, generator=gen) * 2.).to(dtype)
        keep = (torch.rand(2, 4, generator=gen) > 0.4).float()  # C's mask is float32 (also under AMP)
        noise = torch.rand(x.shape, generator=gen).to(dtype) if explicit else None
        grad_out = torch.randn(x.shape, generator=gen).to(dtype)
        seed = torch.tensor([1234], dtype=torch.int64)
        memory_format = torch.channels_last if layout == 'channels_last' else torch.contiguous_format

        def fused(x=x, keep=keep, noise=noise, grad_out=grad_out, memory_format=memory_format,
                  needs_grad_x=needs_grad_x, noise_mode=noise_mode):
            x_d = leaf(x, device, needs_grad_x, memory_format=memory_format)
            keep_d = leaf(keep, device)
            out = fused_patch_noise(x_d, keep_d, patch_size, lower.to(device), upper.to(device),
                                    noise=None if noise is None else noise.to(device),
                                    seed=None if noise is not None else seed.to(device), noise_mode=noise_mode)
            out.backward(grad_out.to(device, memory_format=memory_format))
            return [out] + ([x_d.grad] if needs_grad_x else []) + [keep_d.grad]

        def reference(x=x, keep=keep, noise=noise, grad_out=grad_out, dtype=dtype, needs_grad_x=needs_grad_x,
                      noise_mode=noise_mode):
            low, high = lower.to(dtype).float(), upper.to(dtype).float()  # rounded to the image dtype, as the kernel's
            if noise is None:  # the kernel's own draw (its uniformity is tested in tests/test_kernels.py)
                wide = torch.full((1, 3, 1, 1), -10., device=device), torch.full((1, 3, 1, 1), 10., device=device)
                uniform = fused_patch_noise(torch.zeros(x.shape, device=device), torch.zeros(keep.shape, device=device),
                                            patch_size, *wide, seed=seed.to(device)).cpu()
                noise = uniform if noise_mode == 'normalized' else low + uniform * (high - low)
            x_r = leaf(x, 'cpu', needs_grad_x, torch.float32)
            keep_r = leaf(keep, 'cpu')
            out = _reference_blend(x_r, keep_r, low, high, noise.float(), patch_size)
            out.backward(grad_out.float())
            return [out] + ([x_r.grad] if needs_grad_x else []) + [keep_r.grad]

        noise_label = 'explicit' if explicit else 'in-kernel'
        yield CheckCase('patch_noise', f'{str(dtype)[6:]} {layout} {noise_label} {noise_mode} noise'
                        f'{", input grad" if needs_grad_x else ""}', dtype, fused, reference,
                        (dtype,) * (2 if needs_grad_x else 1) + (torch.float32,))
