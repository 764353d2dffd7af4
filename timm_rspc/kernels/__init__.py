"""Fused Triton kernels for the RSPC step, each with the PyTorch composition it replaces as reference and fallback.

On GPUs the small element-wise parts of an RSPC step (mask upsampling, noise, blend, clamp; the per-block distance
between the two halves of a paired batch) are several kernel launches and memory passes each. The kernels here do each
in one pass. They are used only for CUDA tensors with Triton installed (the optional ``triton`` extra) and
``TIMM_RSPC_KERNELS`` not set to ``0``; everywhere else the PyTorch reference runs. Importing this package never
imports Triton: the kernel modules load on first use.

A kernel is an optional fast path, so it must never stop a training run: on first use per process, device and kernel,
a tiny self-check compares it with its PyTorch reference (`timm_rspc.kernels.checks.self_check`). A mismatch or an
error (a compiler that rejects the kernel on this GPU architecture, a launch failure) gives one warning naming the
kernel, and the PyTorch path from then on. ``timm-rspc info`` shows the outcome.

The PyTorch references live with the code that dispatches to the kernels (the method's alignment and corruption, the
analysis' attention statistics), one layer up. This package imports nothing of the package above it (no import
cycles; see ARCHITECTURE.md), so that code hands its references down: it calls `register_reference` when it is
imported, and the self-checks and fallbacks call them through `references`. A kernel whose reference nobody
registered is not used.
"""
import functools
import importlib.util
import os
import threading
import types
import warnings
from typing import Callable, Dict, Optional, Tuple, TypeVar

import torch

__all__ = ['triton_available', 'use_kernels', 'kernel_status', 'disable_kernel', 'guarded', 'KERNELS',
           'REFERENCE_FUNCTIONS', 'register_reference', 'references', 'ReferenceMissing']

KERNELS_ENV = 'TIMM_RSPC_KERNELS'
# Kernel module -> the PyTorch functions it replaces, by name: what its dispatching code registers (see
# `register_reference`). Kept here so that this import stays Triton-free.
REFERENCE_FUNCTIONS: Dict[str, Tuple[str, ...]] = {
    'patch_noise': ('draw_noise', 'patch_mask_to_pixels', 'blend_noise'),
    'paired_distance': ('paired_mse',),
    'attention_change': ('attention_change_sums',),
}
# The kernel modules; `use_kernels` checks each on first use.
KERNELS = tuple(REFERENCE_FUNCTIONS)

# kernel -> its registered PyTorch functions, as attributes.
_REFERENCES: Dict[str, types.SimpleNamespace] = {}

# (kernel, device) -> None if the kernel passed its self-check there, else why it is off.
_STATUS: Dict[Tuple[str, str], Optional[str]] = {}
_WARNED = set()
_LOCK = threading.Lock()
T = TypeVar('T')


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether Triton can be imported (it is an optional extra)."""
    return importlib.util.find_spec('triton') is not None


class ReferenceMissing(LookupError):
    """A kernel's PyTorch reference was asked for before anything registered it."""


def register_reference(kernel: str, **functions: Callable) -> None:
    """Hand ``kernel`` the PyTorch functions it replaces (exactly the names in `REFERENCE_FUNCTIONS`).

    Called once, at import, by the module that dispatches to the kernel, right where those functions are defined:
    the reference code then exists in one place, and this package, which sits below that module, never imports it.
    The kernel's self-check compares the kernel with them and a failed launch returns their result. They may dispatch
    to the kernel themselves (the public functions do): the kernels call them only on CPU tensors (the self-check
    cases) or after `guarded` has switched the kernel off, where `use_kernels` declines and their PyTorch path runs.
    Registering again replaces the functions (a reloaded module).
    """
    if kernel not in REFERENCE_FUNCTIONS:
        raise ValueError(f'Unknown kernel {kernel!r}; choose one of {KERNELS}.')
    expected = REFERENCE_FUNCTIONS[kernel]
    if sorted(functions) != sorted(expected):
        raise TypeError(f"The kernel '{kernel}' replaces {expected}; got references for {tuple(functions)}.")
    _REFERENCES[kernel] = types.SimpleNamespace(**functions)


def references(kernel: str) -> types.SimpleNamespace:
    """The PyTorch functions registered for ``kernel`` (attributes named as in `REFERENCE_FUNCTIONS`); raises
    `ReferenceMissing` if none are: the kernel is then not dispatched to (`kernel_status`), so only a direct call of a
    kernel wrapper (a benchmark, a test) can get here, and it says what to import."""
    try:
        return _REFERENCES[kernel]
    except KeyError:
        raise ReferenceMissing(
            f"No PyTorch reference is registered for the Triton kernel '{kernel}' ({REFERENCE_FUNCTIONS.get(kernel)})"
            ': import the module that defines them (it registers them at import).') from None


def _device_key(device: torch.device) -> str:
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return str(device)


def disable_kernel(kernel: str, device: torch.device, reason: str) -> None:
    """Switch ``kernel`` off on ``device`` for the rest of the process, with one warning per kernel that says what
    happened and how to skip the kernels altogether."""
    with _LOCK:
        _STATUS[(kernel, _device_key(device))] = reason
        if kernel in _WARNED:
            return
        _WARNED.add(kernel)
    warnings.warn(f"timm_rspc: the Triton kernel '{kernel}' {reason} on {device}; its PyTorch path runs instead "
                  f"(slower); set {KERNELS_ENV}=0 to skip the kernels.", RuntimeWarning, stacklevel=3)


def first_line(error: BaseException) -> str:
    """An exception as one short line, for the one-line warnings and reports."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0][:200] if lines else ""}'.rstrip(': ')


def guarded(kernel: str, device: torch.device, fast: Callable[[], T], fallback: Callable[[], T]) -> T:
    """``fast()`` (a kernel launch); if it raises (e.g. the compiler rejects a specialisation the self-check did not
    cover), switch ``kernel`` off with its one warning and return ``fallback()``, the PyTorch reference."""
    try:
        return fast()
    except Exception as error:  # noqa: BLE001 - an optional fast path must never stop training
        disable_kernel(kernel, device, f'failed ({first_line(error)})')
        return fallback()


def kernel_status(kernel: str, device: torch.device) -> Optional[str]:
    """``None`` if ``kernel`` may run on the CUDA ``device``, else why not. Runs the kernel's self-check the first time
    it is asked for a device (not during CUDA graph capture, where a check cannot run: the PyTorch path runs then).
    A kernel whose reference is not registered (`register_reference`) is not used; nothing is checked or remembered
    then, so it is checked once its reference is registered."""
    if kernel not in REFERENCE_FUNCTIONS:
        raise ValueError(f'Unknown kernel {kernel!r}; choose one of {KERNELS}.')
    if kernel not in _REFERENCES:
        return 'not used: its PyTorch reference is not registered (nothing imported the code that dispatches to it)'
    key = (kernel, _device_key(device))
    if key not in _STATUS:
        if device.type == 'cuda' and torch.cuda.is_current_stream_capturing():
            return 'was not checked yet (CUDA graph capture)'
        from timm_rspc.kernels.checks import self_check
        reason = self_check(kernel, device)
        if reason is None:
            _STATUS.setdefault(key, None)
        else:
            disable_kernel(kernel, device, reason)
    return _STATUS[key]


def use_kernels(tensor: torch.Tensor, kernel: Optional[str] = None) -> bool:
    """Whether the method should call the fused kernel ``kernel`` (one of `KERNELS`; ``None``: all of them) for
    ``tensor``: a CUDA tensor, Triton installed, not switched off by ``TIMM_RSPC_KERNELS=0``, not inside
    ``torch.compile`` (whose inductor fuses the same element-wise code itself), and the kernel's self-check passed on
    that device (which needs its PyTorch reference registered, see `register_reference`). (Tests call the kernels
    directly on CPU under ``TRITON_INTERPRET=1``.)"""
    if not tensor.is_cuda or os.environ.get(KERNELS_ENV, '1') == '0' or torch.compiler.is_compiling():
        return False
    if not triton_available():
        return False
    return all(kernel_status(name, tensor.device) is None for name in (KERNELS if kernel is None else (kernel,)))
