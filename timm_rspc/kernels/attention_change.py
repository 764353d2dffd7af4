"""Fused attention-change statistics: one pass over the clean and corrupted attention maps of a layer.

The PyTorch reference (the analysis' ``attention_change_sums``, registered with `timm_rspc.kernels.register_reference`)
builds the mixture ``m = (p + q) / 2`` and four ``xlogy`` terms, the products for the cosine and the masked masses:
about ten tensors the size of the attention maps (B x heads x Q x K, float32) per layer per batch. Here one program
reduces one attention row of both maps in registers and writes four numbers per row (Jensen-Shannon divergence, cosine
similarity, attention mass on the corrupted keys in the clean and in the corrupted map); the per-row values are then
summed in float64 exactly as the reference sums them.
"""
from typing import Dict, Iterator, Tuple

import torch
import triton
import triton.language as tl

from timm_rspc.kernels import guarded, references

__all__ = ['fused_attention_change_sums', 'check_cases']

_COSINE_EPS = 1e-8  # F.cosine_similarity's default


@triton.jit
def _xlogy(x, y):
    # torch.xlogy: 0 where x is 0 (the log's argument is replaced there, so no -inf * 0 is ever formed).
    return x * tl.log(tl.where(x == 0., 1., y))


@triton.jit
def _attention_row_stats(
        p_ptr, q_ptr, key_mask_ptr, out_ptr, rows_per_image, num_keys,
        BLOCK_K: tl.constexpr, EPS: tl.constexpr):
    row = tl.program_id(0)
    image = row // rows_per_image
    js = tl.zeros((BLOCK_K,), dtype=tl.float32)
    dot = tl.zeros((BLOCK_K,), dtype=tl.float32)
    norm_p = tl.zeros((BLOCK_K,), dtype=tl.float32)
    norm_q = tl.zeros((BLOCK_K,), dtype=tl.float32)
    mass_p = tl.zeros((BLOCK_K,), dtype=tl.float32)
    mass_q = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for start in range(0, num_keys, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        valid = k < num_keys
        p = tl.load(p_ptr + row * num_keys + k, mask=valid, other=0.).to(tl.float32)
        q = tl.load(q_ptr + row * num_keys + k, mask=valid, other=0.).to(tl.float32)
        w = tl.load(key_mask_ptr + image * num_keys + k, mask=valid, other=0).to(tl.float32)
        m = 0.5 * (p + q)
        js += _xlogy(p, p) - _xlogy(p, m) + _xlogy(q, q) - _xlogy(q, m)
        dot += p * q
        norm_p += p * p
        norm_q += q * q
        mass_p += p * w
        mass_q += q * w
    js_row = tl.maximum(0.5 * tl.sum(js, axis=0), 0.)
    cosine = tl.sum(dot, axis=0) / tl.maximum(tl.sqrt(tl.sum(norm_p, axis=0) * tl.sum(norm_q, axis=0)), EPS)
    tl.store(out_ptr + row * 4 + 0, js_row)
    tl.store(out_ptr + row * 4 + 1, cosine)
    tl.store(out_ptr + row * 4 + 2, tl.sum(mass_p, axis=0))
    tl.store(out_ptr + row * 4 + 3, tl.sum(mass_q, axis=0))


def fused_attention_change_sums(
        clean: torch.Tensor, corrupted: torch.Tensor, corrupted_keys: torch.Tensor, corrupted_queries: torch.Tensor,
) -> Dict[str, torch.Tensor]:
    """Same arguments and result as the analysis' ``attention_change_sums``; equal to rounding."""
    if clean.shape != corrupted.shape or clean.ndim != 4:
        raise ValueError(f'Expected two attention maps shaped (batch, heads, queries, keys), got '
                         f'{tuple(clean.shape)} and {tuple(corrupted.shape)}.')
    return guarded('attention_change', clean.device,
                   lambda: _fused_sums(clean, corrupted, corrupted_keys, corrupted_queries),
                   lambda: _reference(clean, corrupted, corrupted_keys, corrupted_queries))


def _reference(*args) -> Dict[str, torch.Tensor]:
    """The PyTorch path: the registered ``attention_change_sums`` (it declines the kernel once `guarded` has switched
    it off, and never dispatches for CPU tensors)."""
    return references('attention_change').attention_change_sums(*args)


def _fused_sums(clean, corrupted, corrupted_keys, corrupted_queries) -> Dict[str, torch.Tensor]:
    batch, heads, queries, keys = clean.shape
    rows = batch * heads * queries
    per_row = torch.empty(rows, 4, dtype=torch.float32, device=clean.device)
    _attention_row_stats[(rows,)](
        clean.contiguous(), corrupted.contiguous(), corrupted_keys.to(torch.uint8).contiguous(), per_row,
        heads * queries, keys, BLOCK_K=min(triton.next_power_of_2(keys), 1024), EPS=_COSINE_EPS)
    per_row = per_row.to(torch.float64).view(batch, heads, queries, 4)
    row_weight = corrupted_queries[:, None, :].to(torch.float64)
    js, cosine = per_row[..., 0], per_row[..., 1]
    return {
        'rows': torch.tensor(float(rows), dtype=torch.float64, device=clean.device),
        'corrupted_rows': row_weight.expand_as(js).sum(),
        'js': js.sum(),
        'cosine': cosine.sum(),
        'js_corrupted_rows': (js * row_weight).sum(),
        'cosine_corrupted_rows': (cosine * row_weight).sum(),
        'attention_to_corrupted_clean': per_row[..., 2].sum(),
        'attention_to_corrupted': per_row[..., 3].sum(),
    }


def check_cases(device: torch.device, dtypes: Tuple[torch.dtype, ...]) -> Iterator:
    """Every launch configuration of `fused_attention_change_sums` (see `timm_rspc.kernels.checks`): attention dtype x
    key count within one block (a ViT's 197 keys) or looped over several (1,500), against the reference on CPU."""
    from timm_rspc.kernels.checks import CheckCase
    for dtype in dtypes:
        for keys in (197, 1500):
            gen = torch.Generator().manual_seed(0)
            shape = (2, 2, 3, keys)
            clean = torch.randn(shape, generator=gen).mul(3).softmax(-1).to(dtype)
            corrupted = torch.randn(shape, generator=gen).mul(3).softmax(-1).to(dtype)
            clean[0, 0, 0] = 0.
            clean[0, 0, 0, 0] = 1.  # a one-hot row: xlogy's zeros
            key_mask = torch.rand(shape[0], keys, generator=gen) > 0.5
            query_mask = torch.rand(shape[0], shape[2], generator=gen) > 0.5

            def fused(clean=clean, corrupted=corrupted, key_mask=key_mask, query_mask=query_mask):
                sums = fused_attention_change_sums(clean.to(device), corrupted.to(device), key_mask.to(device),
                                                   query_mask.to(device))
                return [sums[name] for name in sorted(sums)]

            def reference(clean=clean, corrupted=corrupted, key_mask=key_mask, query_mask=query_mask):
                sums = _reference(clean.float(), corrupted.float(), key_mask, query_mask)
                return [sums[name] for name in sorted(sums)]
            yield CheckCase('attention_change', f'{str(dtype)[6:]} attention, {keys} keys', dtype, fused, reference,
                            (torch.float64,) * 8)
