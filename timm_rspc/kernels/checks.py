"""Checks of the Triton kernels: against their PyTorch references on a device, and compiled ahead of time for GPUs.

Each kernel module lists, in its ``check_cases``, every launch configuration its Python wrapper can produce (dtypes,
noise source and mode, with or without the input gradient, forward and backward) as `CheckCase` objects. Three users
share that one list, so that none of them can drift from the launcher:

* `self_check`: the runtime safety net (`timm_rspc.kernels.use_kernels` runs it on first use per process, device and
  kernel): one tiny case against the reference before the kernel is trusted with a training step.
* `compile_matrix` (``python -m timm_rspc.kernels.checks``, run by ``tests/test_kernels_compile.py``): every case's
  launches recorded on CPU and compiled for each GPU architecture with Triton's own compiler, which needs no GPU.
  Triton's interpreter accepts code the real compiler rejects; this catches it in CI.
* ``benchmarks/gpu_check.py``: every case on a real GPU in fp32 / fp16 / bf16.

The references run on CPU in float32 (the PyTorch functions the dispatching code registered with
`timm_rspc.kernels.register_reference`, which never dispatch to a kernel there), so a half-precision kernel is compared
with the exact result, within its dtype's rounding. Only ``reference()`` needs them: the compile matrix runs the
kernels alone and works with nothing registered.
"""
import argparse
import dataclasses
import importlib
import json
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from timm_rspc.kernels import KERNELS, first_line

__all__ = ['KERNELS', 'ARCHS', 'DTYPES', 'COMPILE_DTYPES', 'CheckCase', 'leaf', 'cases', 'run_case', 'self_check',
           'compile_matrix']

# The architectures CI compiles for: A100 (sm_80) and H100 (sm_90).
ARCHS = (80, 90)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The wrappers also take float64 (their gradcheck tests use it); compiled, not timed or checked on GPUs.
COMPILE_DTYPES = DTYPES + (torch.float64,)
# (rtol, atol) per dtype: one rounding of the result to the dtype, on values of order 1 (atol grows with the
# reference's magnitude, for sums).
_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-7, 1e-7), torch.float16: (1e-2, 1e-2),
              torch.bfloat16: (4e-2, 4e-2)}


@dataclasses.dataclass
class CheckCase:
    """One launch configuration of a kernel: ``fused()`` runs the kernel wrapper (forward and backward) on the device
    and returns its outputs and gradients, ``reference()`` the same from the PyTorch reference (float32, CPU)."""
    kernel: str
    label: str
    dtype: torch.dtype
    fused: Callable[[], Sequence[torch.Tensor]]
    reference: Callable[[], Sequence[torch.Tensor]]
    out_dtypes: Tuple[torch.dtype, ...]


def leaf(tensor: torch.Tensor, device, requires_grad: bool = True, dtype: Optional[torch.dtype] = None,
         memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """A fresh leaf copy of a case's input (``.to`` alone may return the input itself, which both sides share)."""
    copy = tensor.to(device=device, dtype=dtype, memory_format=memory_format, copy=True)
    return copy.requires_grad_(requires_grad)


def cases(kernel: str, device, dtypes: Sequence[torch.dtype] = DTYPES) -> Iterator[CheckCase]:
    """Every launch configuration of ``kernel`` (a name in `KERNELS`) on ``device`` for ``dtypes``."""
    module = importlib.import_module(f'timm_rspc.kernels.{kernel}')
    return module.check_cases(torch.device(device), tuple(dtypes))


def run_case(case: CheckCase) -> Optional[str]:
    """``None`` if the kernel's outputs match the reference in count, shape, dtype and values, else what differs."""
    got, expected = list(case.fused()), list(case.reference())
    if len(got) != len(expected):
        return f'{case.label}: {len(got)} outputs, the reference has {len(expected)}'
    rtol, atol = _TOLERANCE[case.dtype]
    for index, (value, ref, dtype) in enumerate(zip(got, expected, case.out_dtypes)):
        if tuple(value.shape) != tuple(ref.shape) or value.dtype != dtype:
            return (f'{case.label}: output {index} is {value.dtype} {tuple(value.shape)}, expected {dtype} '
                    f'{tuple(ref.shape)}')
        value, ref = value.detach().cpu().double(), ref.detach().double()
        scale = max(1., ref.abs().max().item()) if ref.numel() else 1.
        if not torch.allclose(value, ref, rtol=rtol, atol=atol * scale, equal_nan=True):
            worst = (value - ref).abs().max().item()
            return f'{case.label}: output {index} differs from the reference by up to {worst:.3g}'
    return None


def _identity(tensor):
    return tensor


def self_check(kernel: str, device) -> Optional[str]:
    """The runtime safety net: the first float32 case of ``kernel`` on ``device`` against its reference.

    Returns ``None`` when it matches, else the reason (a mismatch, or the error the compiler or launch raised). It
    leaves the caller's state alone and is not disturbed by it: it may run inside a training step under autocast,
    ``inference_mode``, a host-sync debug mode (it must sync once to compare), activation checkpointing (whose
    saved-tensor hooks would take its tensors; identity hooks stand in) or a seeded RNG (its inputs come from their own
    generators).
    """
    device = torch.device(device)
    sync_mode = torch.cuda.get_sync_debug_mode() if device.type == 'cuda' else 0
    try:
        if sync_mode:
            torch.cuda.set_sync_debug_mode(0)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False), \
                torch.autograd.graph.saved_tensors_hooks(_identity, _identity):
            mismatch = run_case(next(iter(cases(kernel, device, (torch.float32,)))))
            return None if mismatch is None else f'did not match its PyTorch reference ({mismatch})'
    except Exception as error:  # noqa: BLE001 - any failure of an optional fast path means: do not use it
        return f'failed its self-check ({first_line(error)})'
    finally:
        if sync_mode:
            torch.cuda.set_sync_debug_mode(sync_mode)


# --- ahead-of-time compilation ------------------------------------------------------------------------------------

def _jit_functions(module) -> List:
    from triton.runtime.jit import JITFunction
    return [value for value in vars(module).values() if isinstance(value, JITFunction) and hasattr(value, 'run')
            and value.fn.__module__ == module.__name__]


def record_launches(kernel: str) -> List[Tuple[str, object, tuple, dict]]:
    """Run every case of ``kernel`` (in `COMPILE_DTYPES`) on CPU with the Triton launches recorded instead of run:
    (case label, jit function, args, kwargs) per launch, in the wrapper's own argument order, strides, constexprs."""
    module = importlib.import_module(f'timm_rspc.kernels.{kernel}')
    functions = _jit_functions(module)
    if not functions:
        raise RuntimeError('Triton runs in interpreter mode (TRITON_INTERPRET=1): nothing can be compiled; run the '
                           'compile check in a process without it.')
    launches: List[Tuple[str, object, tuple, dict]] = []
    label = ['']

    def recorder(fn):
        def run(*args, grid, warmup, **kwargs):
            launches.append((label[0], fn, args, kwargs))
        return run
    for fn in functions:
        fn.run = recorder(fn)  # an instance attribute over JITFunction.run
    try:
        for case in cases(kernel, 'cpu', COMPILE_DTYPES):
            label[0] = case.label
            case.fused()  # the outputs are uninitialised: nothing ran
    finally:
        for fn in functions:
            del fn.run
    return launches


def compile_matrix(archs: Sequence[int] = ARCHS, kernels: Sequence[str] = KERNELS,
                   first_only: bool = False) -> List[Dict]:
    """Compile every distinct recorded launch of ``kernels`` for each architecture in ``archs``.

    The signature, constexprs and specialisation attributes (16-byte alignment, divisibility, ints equal to 1) come
    from Triton's own binder for the target backend, as at a real launch; ``triton.compile`` with a ``GPUTarget``
    then produces PTX and a cubin without a GPU. ``first_only`` compiles one launch per jit function (a quick check).
    One row per (jit function, architecture, configuration): compiled or the error, the cubin's size, the seconds.
    The binder and ``_pack_args`` are the two calls ``JITFunction.run`` itself makes (Triton 3.x internals): a Triton
    that changes them makes this check fail loudly rather than check a signature of its own invention.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    rows = []
    for arch in archs:
        target = GPUTarget('cuda', arch, 32)
        backend = make_backend(target)
        for kernel in kernels:
            seen = set()
            for label, fn, args, kwargs in record_launches(kernel):
                binder = create_function_from_signature(fn.signature, fn.params, backend)
                bound_args, specialization, options = binder(*args, **kwargs)
                options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization,
                                                                       options)
                key = (fn.__name__, repr(signature), repr(constexprs), repr(attrs))
                if key in seen or (first_only and any(k[0] == fn.__name__ for k in seen)):
                    continue
                seen.add(key)
                row = dict(kernel=kernel, function=fn.__name__, arch=f'sm_{arch}', case=label, compiled=False,
                           cubin_bytes=0)
                start = time.perf_counter()
                try:
                    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                              options=options.__dict__)
                    cubin = compiled.asm.get('cubin', b'')
                    row.update(compiled=bool(cubin), cubin_bytes=len(cubin))
                except Exception as error:  # noqa: BLE001 - reported per row
                    row['error'] = first_line(error)
                row['seconds'] = round(time.perf_counter() - start, 3)
                rows.append(row)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Compile every Triton kernel launch configuration for GPU '
                                                 'architectures (no GPU needed); exit 1 if any fails.')
    parser.add_argument('--archs', nargs='+', type=int, default=list(ARCHS), help='compute capabilities, e.g. 80 90')
    parser.add_argument('--kernels', nargs='+', choices=KERNELS, default=list(KERNELS))
    parser.add_argument('--first-only', action='store_true', help='one configuration per jit function')
    parser.add_argument('--json', help='write the rows to this file')
    args = parser.parse_args(argv)
    rows = compile_matrix(args.archs, args.kernels, args.first_only)
    for row in rows:
        status = f"cubin {row['cubin_bytes']} B" if row['compiled'] else f"FAILED {row.get('error', 'no cubin')}"
        print(f"{row['arch']} {row['function']:<24} {row['case']:<48} {status} ({row['seconds']} s)")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    failed = [row for row in rows if not row['compiled']]
    print(f'{len(rows) - len(failed)} of {len(rows)} compiled')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
