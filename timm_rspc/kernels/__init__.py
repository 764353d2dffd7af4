"""Fused Triton kernels for the RSPC step, each with the PyTorch composition it replaces as reference and fallback.

On GPUs the small element-wise parts of an RSPC step (mask upsampling, noise, blend, clamp; the per-block distance
between the two halves of a paired batch) are several kernel launches and memory passes each. The kernels here do each
in one pass. They are used only for CUDA tensors with Triton installed (the optional ``triton`` extra) and
``TIMM_RSPC_KERNELS`` not set to ``0``; everywhere else the PyTorch reference runs. Importing this package never
imports Triton: the kernel modules load on first use.
"""
import functools
import importlib.util
import os

import torch

__all__ = ['triton_available', 'use_kernels']

KERNELS_ENV = 'TIMM_RSPC_KERNELS'


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether Triton can be imported (it is an optional extra)."""
    return importlib.util.find_spec('triton') is not None


def use_kernels(tensor: torch.Tensor) -> bool:
    """Whether the method should call the fused kernels for ``tensor``: a CUDA tensor, Triton installed, not switched
    off by ``TIMM_RSPC_KERNELS=0``, and not inside ``torch.compile``, whose inductor fuses the same element-wise code
    itself. (Tests call the kernels directly on CPU under ``TRITON_INTERPRET=1``.)"""
    if not tensor.is_cuda or os.environ.get(KERNELS_ENV, '1') == '0' or torch.compiler.is_compiling():
        return False
    return triton_available()
