"""Fused paired alignment: the MSE between the two halves of a paired batch's features, forward and backward.

The method's ``paired_mse`` (this kernel's registered reference, see `timm_rspc.kernels.register_reference`) casts both
halves to float32 (two copies for bf16 / fp16 features), forms their difference, squares it and averages: several
tensors the size of a block's output, per block, per step. Here the forward reads each element of both halves once and
accumulates the squared difference in float32 per program; the backward writes ``+-2 (a - b) / n`` into both halves'
gradients in one pass. Nothing image- or feature-sized is materialised besides the gradient itself.
"""
from typing import Iterator, Tuple

import torch
import triton
import triton.language as tl

from timm_rspc.kernels import guarded, references

__all__ = ['fused_paired_mse', 'check_cases']

_BLOCK = 1024


@triton.jit
def _paired_sq_sum_fwd(feat_ptr, partial_ptr, half_numel, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < half_numel
    a = tl.load(feat_ptr + offsets, mask=valid, other=0.).to(ACC)
    b = tl.load(feat_ptr + half_numel + offsets, mask=valid, other=0.).to(ACC)
    diff = a - b
    tl.store(partial_ptr + pid, tl.sum(diff * diff, axis=0))


@triton.jit
def _paired_sq_sum_bwd(feat_ptr, grad_loss_ptr, grad_ptr, half_numel, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < half_numel
    a = tl.load(feat_ptr + offsets, mask=valid, other=0.).to(ACC)
    b = tl.load(feat_ptr + half_numel + offsets, mask=valid, other=0.).to(ACC)
    scale = tl.load(grad_loss_ptr).to(ACC) * 2. / half_numel
    grad = (a - b) * scale
    tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=valid)
    tl.store(grad_ptr + half_numel + offsets, (-grad).to(grad_ptr.dtype.element_ty), mask=valid)


class _FusedPairedMSE(torch.autograd.Function):

    @staticmethod
    def forward(ctx, features):
        # A paired batch is (2B, ...): viewed as two contiguous halves. Non-contiguous features are copied once.
        flat = features.contiguous().view(-1)
        half_numel = flat.numel() // 2
        programs = triton.cdiv(half_numel, _BLOCK)
        wide = flat.dtype == torch.float64
        partial = torch.empty(programs, dtype=torch.float64 if wide else torch.float32, device=flat.device)
        _paired_sq_sum_fwd[(programs,)](flat, partial, half_numel, BLOCK=_BLOCK, ACC=tl.float64 if wide else tl.float32)
        ctx.save_for_backward(flat)
        ctx.shape = features.shape
        return partial.sum() / half_numel

    @staticmethod
    def backward(ctx, grad_loss):
        flat, = ctx.saved_tensors
        half_numel = flat.numel() // 2

        def launch():
            grad = torch.empty_like(flat)
            _paired_sq_sum_bwd[(triton.cdiv(half_numel, _BLOCK),)](
                flat, grad_loss.reshape(1).contiguous(), grad, half_numel, BLOCK=_BLOCK,
                ACC=tl.float64 if flat.dtype == torch.float64 else tl.float32)
            return grad.view(ctx.shape)

        def reference():
            with torch.enable_grad():
                features = flat.detach().view(ctx.shape).requires_grad_(True)
                return torch.autograd.grad(_reference(features), features, grad_loss)[0]
        return guarded('paired_distance', flat.device, launch, reference)


def _reference(features: torch.Tensor) -> torch.Tensor:
    """The PyTorch path: the registered ``paired_mse`` (it declines the kernel once `guarded` has switched it off, and
    never dispatches for CPU tensors)."""
    return references('paired_distance').paired_mse(features)


def fused_paired_mse(features: torch.Tensor) -> torch.Tensor:
    """MSE between ``features[:B]`` and ``features[B:]`` of a (2B, ...) tensor, accumulated in float32 (float64 for
    float64 features).

    Equals the method's ``paired_mse`` up to the order of the float32 summation; differentiable.
    """
    if features.shape[0] % 2:
        raise ValueError(
            f'Paired features need an even batch (corrupted half, clean half), got a batch of {features.shape[0]}.')
    return guarded('paired_distance', features.device, lambda: _FusedPairedMSE.apply(features),
                   lambda: _reference(features))


def check_cases(device: torch.device, dtypes: Tuple[torch.dtype, ...]) -> Iterator:
    """Every launch configuration of `fused_paired_mse` (see `timm_rspc.kernels.checks`): feature dtype x half size
    a multiple of 16 or not (Triton specialises on it), forward and backward, against ``paired_mse`` on CPU."""
    from timm_rspc.kernels.checks import CheckCase, leaf
    for dtype in dtypes:
        for shape in ((4, 197, 8), (6, 5, 7)):  # halves of 3,152 (a multiple of 16) and 105 elements
            features = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)

            def fused(features=features):
                inputs = leaf(features, device)
                loss = fused_paired_mse(inputs)
                (loss * 3.).backward()
                return [loss, inputs.grad]

            def reference(features=features):
                inputs = leaf(features, 'cpu', dtype=torch.float32)
                loss = _reference(inputs)
                (loss * 3.).backward()
                return [loss, inputs.grad]
            yield CheckCase('paired_distance', f'{str(dtype)[6:]} features {shape}', dtype, fused, reference,
                            (torch.float32, dtype))
