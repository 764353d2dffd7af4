"""The one prepared GPU check: everything of the CUDA path that CPU tests cannot reach, in one unattended run.

    pip install -e ".[dev]" && python benchmarks/gpu_check.py     # on one GPU, under 10 minutes; exit 1 on a mismatch
    python benchmarks/gpu_check.py --dry-run                      # CPU, seconds: every section runs or says skipped

Sections (each passes, fails or is skipped with its reason; any failure makes the exit status 1, named at the end):

* ``kernels``: every launch configuration of every Triton kernel (`timm_rspc.kernels.checks`, the list CI compiles)
  against its PyTorch reference in fp32 / fp16 / bf16 (the interpreter cannot check bf16).
* ``equivalence``: the RSPC step of ViT, RVT and FAN with the kernels on and off, same weights and explicit noise:
  the same loss and gradients within float32 summation-order tolerance.
* ``amp``: three steps under fp16 autocast with timm's GradScaler (``NativeScaler``: finite losses, not every step
  skipped for overflow) and under bf16.
* ``sync``: the step under ``torch.cuda.set_sync_debug_mode('error')``: no host-device synchronisation.
* ``compile``: the task compiled by ``torch.compile`` (inductor) gives the eager step.
* ``ddp``: two NCCL processes keep C and the backbone identical across ranks (needs two GPUs, else skipped, said so;
  the dry run uses gloo on CPU).
* ``timing``: RSPC step at B vs plain step at 2B (time, and ``max_memory_allocated``) with the kernels on and off, and
  each kernel against its reference: ``benchmarks/run.py``'s measurements, reused.

The tables go into ``benchmarks/RESULTS.md`` (between the gpu_check markers, which ``run.py`` keeps), naming the
card; ``--dry-run`` writes only where ``--output`` says.
"""
import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import run as suite  # noqa: E402  (benchmarks/run.py: steps, timing, memory, kernel timings, report tables)
from timm_rspc.kernels import KERNELS, KERNELS_ENV, kernel_status  # noqa: E402
# The code that dispatches to the kernels registers their PyTorch references (self-checks, cases, fallbacks).
import timm_rspc.analysis.attention  # noqa: E402,F401
import timm_rspc.method.alignment  # noqa: E402,F401
import timm_rspc.method.corruption  # noqa: E402,F401

BEGIN, END = suite.GPU_CHECK_MARKERS
SECTIONS = ('kernels', 'equivalence', 'amp', 'sync', 'compile', 'ddp', 'timing')


class Skip(Exception):
    """A section that cannot run here; its message says why."""


@contextlib.contextmanager
def kernels_enabled(enabled: bool):
    """The kernels on or off for the duration (``use_kernels`` reads ``TIMM_RSPC_KERNELS`` at every call)."""
    previous = os.environ.get(KERNELS_ENV)
    os.environ[KERNELS_ENV] = '1' if enabled else '0'
    try:
        yield
    finally:
        if previous is None:
            del os.environ[KERNELS_ENV]
        else:
            os.environ[KERNELS_ENV] = previous


def _batch(batch: int, img_size: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen)
    target = torch.randint(0, 1000, (batch,), generator=gen)
    noise = torch.rand(x.shape, generator=gen)
    return x.to(device), target.to(device), noise.to(device)


def _task(model_name: str, args, device: torch.device, loss_scaler=None):
    from timm_rspc.method import RSPCTask
    task = RSPCTask(suite._model(model_name, args.img_size, device), nn.CrossEntropyLoss(), img_size=args.img_size,
                    verbose=False, device=device)
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-4)
    task.attach_optimizer(optimizer, loss_scaler=loss_scaler)
    return task, optimizer


def _grads(task) -> Dict[str, torch.Tensor]:
    # (torch.compile's wrapper adds '_orig_mod.' to the names)
    return {name.replace('_orig_mod.', ''): p.grad.detach().clone()
            for name, p in task.get_trainable_module().named_parameters() if p.grad is not None}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


class Sci(float):
    """A relative error, shown as 1.2e-07 in the tables (run.py's table shows plain floats with 3 decimals)."""

    def __format__(self, spec):
        return f'{float(self):.1e}'


# --- sections ----------------------------------------------------------------------------------------------------

def check_kernels(args, device) -> List[Dict]:
    from timm_rspc.kernels.checks import DTYPES, cases, run_case
    if device.type != 'cuda':
        import triton
        if not triton.knobs.runtime.interpret:
            raise Skip('the kernels run on CUDA (on CPU only under TRITON_INTERPRET=1)')
    dtypes = DTYPES if device.type == 'cuda' else (torch.float32,)  # the interpreter gets bf16 wrong
    rows = []
    for kernel in KERNELS:
        for index, case in enumerate(cases(kernel, device, dtypes)):
            if args.dry_run and index:
                break
            mismatch = run_case(case)
            rows.append(dict(kernel=kernel, case=case.label, result=mismatch or 'matches', ok=mismatch is None))
        # A launch that failed fell back to the reference (so its case matched) and switched the kernel off: a failure.
        state = kernel_status(kernel, device)
        rows.append(dict(kernel=kernel, case='state after its cases', result=state or 'active', ok=state is None))
    return rows


def check_equivalence(args, device) -> List[Dict]:
    rows = []
    x, target, noise = _batch(args.check_batch, args.img_size, device)
    for model_name in args.models:
        results = {}
        for enabled in (True, False):
            run_task, _ = _task(model_name, args, device)  # the same weights: _model and C seed the RNG alike
            with kernels_enabled(enabled):
                out = run_task(x, target, noise=noise)
                out['loss'].backward()
            results[enabled] = out['loss'].detach(), _grads(run_task)
        (loss_on, grads_on), (loss_off, grads_off) = results[True], results[False]
        grad_error = max(_relative_error(grads_on[name], grads_off[name]) for name in grads_off)
        loss_error = _relative_error(loss_on, loss_off)
        rows.append(dict(model=model_name, kernels_used=device.type == 'cuda', loss=loss_off.item(),
                         loss_rel_error=Sci(loss_error), max_grad_rel_error=Sci(grad_error),
                         ok=loss_error <= 1e-5 and grad_error <= 1e-3))
    return rows


def check_amp(args, device) -> List[Dict]:
    from timm.utils import NativeScaler
    rows = []
    x, target, _ = _batch(args.check_batch, args.img_size, device)
    for dtype in (torch.float16, torch.bfloat16):
        for model_name in args.models:
            scaler = NativeScaler(device=device.type) if dtype is torch.float16 else None
            task, optimizer = _task(model_name, args, device, loss_scaler=scaler)
            losses, skipped = [], 0
            for _ in range(3):
                with torch.autocast(device.type, dtype=dtype):
                    loss = task(x, target)['loss']
                losses.append(loss.item())
                if scaler is not None:
                    scale = scaler.state_dict()['scale']
                    scaler(loss, optimizer)
                    skipped += scaler.state_dict()['scale'] < scale  # an overflow: the scaler skipped the step
                else:
                    loss.backward()
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            # A skipped first step is GradScaler's normal calibration; every step skipped, or a NaN loss, is a bug.
            ok = all(map(math.isfinite, losses)) and skipped < len(losses)
            rows.append(dict(amp=str(dtype)[6:], model=model_name, loss=losses[-1], skipped_steps=skipped, ok=ok))
    return rows


def check_sync(args, device) -> List[Dict]:
    if device.type != 'cuda':
        raise Skip('set_sync_debug_mode needs CUDA')
    return [suite.sync_row(model_name, args.check_batch, args.img_size, device) for model_name in args.models]


def check_compile(args, device) -> List[Dict]:
    # inductor on CPU takes minutes on a small machine: the dry run compiles with the eager backend (same code path).
    backend = 'eager' if args.dry_run else 'inductor'
    x, target, noise = _batch(args.check_batch, args.img_size, device)
    model_name = args.models[-1]
    eager, _ = _task(model_name, args, device)
    compiled, _ = _task(model_name, args, device)
    compiled.compile(backend=backend)
    results = []
    for task in (eager, compiled):
        out = task(x, target, noise=noise)
        out['loss'].backward()
        results.append((out['loss'].detach(), _grads(task)))
    (loss_e, grads_e), (loss_c, grads_c) = results
    loss_error = _relative_error(loss_c, loss_e)
    grad_error = max(_relative_error(grads_c[name], grads_e[name]) for name in grads_e)
    return [dict(model=model_name, backend=backend, loss_rel_error=Sci(loss_error), max_grad_rel_error=Sci(grad_error),
                 ok=loss_error <= 1e-4 and grad_error <= 1e-2)]


def _ddp_worker(rank: int, backend: str, init_file: str, out_dir: str, model_name: str, img_size: int,
                batch: int) -> None:
    import torch.distributed as dist
    dist.init_process_group(backend, init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        device = torch.device('cuda', rank) if backend == 'nccl' else torch.device('cpu')
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        torch.manual_seed(100 + rank)  # C differs per rank until prepare_distributed
        task, optimizer = _task(model_name, argparse.Namespace(img_size=img_size), device)
        task.prepare_distributed(device_ids=[rank] if device.type == 'cuda' else None)
        x, target, _ = _batch(batch, img_size, device, seed=rank)  # each rank its own data
        for _ in range(2):
            task(x, target)['loss'].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state = dict(task.corruption_model.state_dict(), **{
            f'backbone.{k}': v for k, v in task.get_eval_model().state_dict().items()})
        torch.save({k: v.cpu() for k, v in state.items()}, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def check_ddp(args, device) -> List[Dict]:
    if device.type == 'cuda' and torch.cuda.device_count() < 2:
        raise Skip(f'two-process NCCL DDP needs 2 GPUs, found {torch.cuda.device_count()}')
    if device.type != 'cuda' and not args.dry_run:
        raise Skip('NCCL DDP needs CUDA')
    # The dry run on CPU runs the same two processes on gloo, so that the GPU run does not meet this code first.
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if __name__ != '__main__':
        raise Skip(f'{backend} DDP: spawned processes must import this file as a script (python '
                   'benchmarks/gpu_check.py)')
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, nprocs=2, join=True, args=(
            backend, os.path.join(tmp, 'init'), tmp, args.models[-1], args.img_size, args.check_batch))
        states = [torch.load(os.path.join(tmp, f'rank{r}.pt'), weights_only=True) for r in range(2)]
    # C's gradients are averaged by its optimiser, the backbone's by DDP: both stay identical across the ranks.
    same_c = all(torch.equal(states[0][k], states[1][k]) for k in states[0] if not k.startswith('backbone.'))
    same_backbone = all(torch.allclose(states[0][k].float(), states[1][k].float(), rtol=1e-5, atol=1e-7)
                        for k in states[0] if k.startswith('backbone.'))
    return [dict(model=args.models[-1], processes=2, backend=backend, c_identical_across_ranks=same_c,
                 backbone_same_across_ranks=same_backbone, ok=same_c and same_backbone)]


def check_timing(args, device) -> List[Dict]:
    rows = []
    for enabled in (True, False) if device.type == 'cuda' else (True,):  # off and on are the same on CPU
        with kernels_enabled(enabled):
            for model_name in args.models:
                for batch in args.batch_sizes:
                    row = suite._step_row(model_name, batch, args, device)
                    row['kernels'] = 'on' if enabled else 'off'
                    if device.type == 'cuda':
                        memory = suite._memory_row(model_name, batch, args, device)
                        row['memory_rspc_vs_floor'] = memory['rspc_vs_floor']
                        row['rspc_B_MiB'] = memory['rspc_B_bytes'] / 2 ** 20
                    else:
                        row['memory_rspc_vs_floor'] = 'skipped: max_memory_allocated needs CUDA'
                    rows.append(row)
                    suite._progress(row)
    return rows


def kernel_timings(args, device) -> Dict:
    return suite.bench_kernels(args, device)


# --- driver and report -------------------------------------------------------------------------------------------

RUNNERS: Dict[str, Callable] = dict(kernels=check_kernels, equivalence=check_equivalence, amp=check_amp,
                                    sync=check_sync, compile=check_compile, ddp=check_ddp, timing=check_timing)
COLUMNS = dict(
    kernels=['kernel', 'case', 'result'],
    equivalence=['model', 'kernels_used', 'loss', 'loss_rel_error', 'max_grad_rel_error', 'ok'],
    amp=['amp', 'model', 'loss', 'skipped_steps', 'ok'],
    sync=['model', 'host_device_syncs', 'ok'],
    compile=['model', 'backend', 'loss_rel_error', 'max_grad_rel_error', 'ok'],
    ddp=['model', 'processes', 'backend', 'c_identical_across_ranks', 'backbone_same_across_ranks', 'ok'],
    timing=['model', 'batch', 'kernels', 'plain_B_s', 'plain_2B_s', 'rspc_B_s', 'rspc_vs_floor',
            'memory_rspc_vs_floor', 'rspc_B_MiB'],
)


def run_sections(args, device) -> Dict[str, Dict]:
    """Every section in turn; an exception is that section's failure (reported with its traceback), not the end."""
    results = {}
    for name in args.only:
        print(f'[{name}]', flush=True)
        start = time.perf_counter()
        try:
            rows = RUNNERS[name](args, device)
            failed = [row for row in rows if row.get('ok') is False]
            results[name] = dict(status='FAILED' if failed else 'passed', rows=rows)
            if name == 'timing':
                timings = kernel_timings(args, device)
                results['kernel_timings'] = dict(status='skipped' if 'skipped' in timings else 'passed', **timings)
        except Skip as reason:
            results[name] = dict(status='skipped', reason=str(reason))
        except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
            traceback.print_exc()
            results[name] = dict(status='FAILED', reason=f'{type(error).__name__}: {error}'.splitlines()[0])
        results[name]['seconds'] = time.perf_counter() - start
        print(f"  {results[name]['status']} ({results[name]['seconds']:.0f} s) {results[name].get('reason', '')}",
              flush=True)
    return results


def report(results: Dict[str, Dict], machine: Dict, args) -> str:
    from timm_rspc.cli.info import collect  # `timm-rspc info`: versions and each kernel's state per GPU
    info = collect()
    card = machine.get('gpu', f"no GPU ({machine['cpu']})")
    versions = ', '.join(f'{name} {version}' for name, version in info['versions'].items())
    states = '; '.join(f'{name} on {device}: {state}' for device, kernels in info['kernels'].items()
                       for name, state in kernels.items()) or f"inactive ({info['inactive_reason']})"
    lines = [BEGIN, f'## GPU check: {card}', '',
             f"`python benchmarks/gpu_check.py{' --dry-run' if args.dry_run else ''}`: {versions}; CUDA "
             f"{info['cuda']}; image size {args.img_size}, check batch {args.check_batch}, timing batches "
             f'{args.batch_sizes}, median of {args.repeats} interleaved repeats. Targets: rspc_vs_floor <= 1.02 (time '
             'and memory), each kernel >= 1.5x its reference, no host syncs.', '', f'Kernels: {states}.', '']
    for name, section in results.items():
        lines.append(f"### {name}: {section['status']} ({section.get('seconds', 0):.0f} s)")
        lines.append('')
        if section.get('reason'):
            lines += [f"- {section['reason']}", '']
        if section.get('skipped'):
            lines += [f"- skipped: {section['skipped']}", '']
        if section.get('rows'):
            columns = COLUMNS.get(name, ['kernel', 'dtype', 'shape', 'speedup'])
            lines += suite._table(section['rows'], columns) + ['']
    lines.append(END)
    return '\n'.join(lines)


def write_into(path: str, block: str) -> None:
    """Replace the gpu_check block of ``path`` (or append one): the rest of RESULTS.md is run.py's."""
    text = open(path).read() if os.path.exists(path) else ''
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip('\n') + ('\n\n' if text else '') + block + '\n'
    with open(path, 'w') as f:
        f.write(text)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dry-run', action='store_true', help='CPU, tiny sizes: every section runs or is skipped')
    parser.add_argument('--device', default=None, help='default: cuda, or cpu with --dry-run')
    parser.add_argument('--models', nargs='+', default=list(suite.STEP_MODELS))
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--check-batch', type=int, default=8, help='batch of the correctness checks')
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[32, 64], help='batches B of the timings')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--only', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--output', default=None,
                        help='the RESULTS.md to write into (default: benchmarks/RESULTS.md; none with --dry-run)')
    args = parser.parse_args(argv)
    if args.dry_run:
        args.img_size, args.check_batch, args.batch_sizes, args.warmup, args.repeats = 32, 2, [2], 0, 1
    device = torch.device(args.device or ('cpu' if args.dry_run else 'cuda'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA device; run it on a GPU, or use --dry-run on CPU.', file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run_sections(args, device)
    block = report(results, suite.describe_machine(device), args)
    output = args.output or (None if args.dry_run else os.path.join(HERE, 'RESULTS.md'))
    if output:
        write_into(output, block)
        print(f'wrote the tables into {output}')
    failed = [name for name, section in results.items() if section['status'] == 'FAILED']
    print(f'gpu_check: {time.perf_counter() - start:.0f} s; ' + ', '.join(
        f"{name} {section['status']}" for name, section in results.items() if name in SECTIONS))
    if failed:
        print(f"GPU CHECK FAILED: {', '.join(failed)} (see the tables and tracebacks above)", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
