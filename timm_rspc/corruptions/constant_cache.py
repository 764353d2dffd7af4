"""Cached constant tensors of the corruptions (resampling taps and matrices, kernels, quantisation tables, photographs).

A cached tensor outlives the call that built it: if that call ran under ``torch.inference_mode()`` (an evaluation),
the tensor would be an inference tensor, which a later differentiable call (the sensitivity analysis) cannot save for
backward. `constant_cache` builds every entry outside inference mode and without autograd, so an entry serves any
later call.
"""
import functools
from typing import Callable, Optional

import torch

__all__ = ['constant_cache']


def constant_cache(maxsize: Optional[int] = 128) -> Callable:
    """``functools.lru_cache(maxsize)`` whose entries are built with inference mode and autograd off."""
    def decorate(factory: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(factory)
        def cached(*args, **kwargs):
            with torch.inference_mode(False), torch.no_grad():
                return factory(*args, **kwargs)
        return cached
    return decorate
