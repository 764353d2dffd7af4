"""The benchmark suite: every performance figure the README and CHANGELOG quote, measured side by side in one run.

    python benchmarks/run.py                  # full suite (about 15 minutes on a 2-core CPU), writes RESULTS.md/.json
    python benchmarks/run.py --quick          # seconds: tiny sizes, checks that every section runs (writes to a temp
                                              # folder, never over the committed RESULTS.md)
    python benchmarks/run.py --only step      # one section: step, memory, authors, inference, kernels, sync

Every figure is a ratio of two measurements taken in the same run, interleaved (A, B, A, B, ...), so that a change of
load on the machine hits both sides alike; the median of the repeats is reported. Sections:

* ``step``: one RSPC step at batch B against one plain step at B and at 2B (its floor: the RSPC step runs every sample
  through the backbone twice).
* ``memory``: peak memory of steady-state steps of the same three configurations. On GPU
  ``torch.cuda.max_memory_allocated``; on CPU each configuration runs in a fresh process that reports its peak resident
  set size (Linux ``VmHWM``, reset after the first step), because the CPU allocator keeps freed memory and a shared
  process would measure the largest configuration every time.
* ``authors``: the package's step against the authors' RVT recipe written with the package's own parts: two RSPC
  passes per step (the first gradient is discarded), the ``torch.quantile`` threshold, and the alignment loss computed
  after the forward from stored block outputs.
* ``inference``: images/s of each model family with its fused attention path against timm's non-fused (eager
  reference) path.
* ``kernels``: each Triton kernel against its PyTorch reference (CUDA only).
* ``sync``: one RSPC step under ``torch.cuda.set_sync_debug_mode('error')`` (CUDA only): no host-device sync.
* ``families``: the ``step`` and ``memory`` measurements at 224 px for a Swin, a ConvNeXt and a PVT-v2 (C with 16 px
  patches, see README's families table), with C's parameter count against the backbone's.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import timm
import torch
import torch.nn as nn

import timm_rspc  # noqa: F401  (registers RVT / FAN)
from timm_rspc.method import (
    PlainClassificationTask, RSPCTask, blend_noise, draw_noise, find_blocks, mean_over_blocks, paired_mse,
    patch_mask_to_pixels, reverse_gradient,
)

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_MODELS = ('rvt_tiny_plus', 'fan_tiny_8_p4_hybrid', 'vit_tiny_patch16_224')
FAMILY_MODELS = ('swin_tiny_patch4_window7_224', 'convnext_atto', 'pvt_v2_b0')
SECTIONS = ('step', 'memory', 'authors', 'inference', 'kernels', 'sync', 'families')
# The blocks of RESULTS.md that other scripts write (benchmarks/gpu_check.py, corruptions_speed.py, ...), each between
# `<!-- NAME: begin -->` and `<!-- NAME: end -->`: write_report keeps them.
GPU_CHECK_MARKERS = ('<!-- gpu_check: begin -->', '<!-- gpu_check: end -->')
OTHER_SCRIPTS_BLOCK = re.compile(r'<!-- (?P<name>[\w.-]+): begin -->.*?<!-- (?P=name): end -->', re.S)


# --- timing ------------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_medians(runs: Dict[str, Callable[[], None]], warmup: int, repeats: int,
                        device: torch.device) -> Dict[str, float]:
    """Median seconds of each callable, timed in interleaved rounds after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# --- training steps ----------------------------------------------------------------------------------------------

def _model(name: str, img_size: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, num_classes=1000, img_size=img_size)
    except TypeError:  # convolutional families take any input size and no img_size argument
        model = timm.create_model(name, num_classes=1000)
    return model.to(device).train()


def _stepper(task, device: torch.device, batch_size: int, img_size: int) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-4)
    task.attach_optimizer(optimizer)
    gen = torch.Generator().manual_seed(batch_size)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(device)
    target = torch.randint(0, 1000, (batch_size,), generator=gen).to(device)

    def step():
        task(x, target)['loss'].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def make_step(kind: str, model_name: str, batch_size: int, img_size: int, device: torch.device) -> Callable[[], None]:
    """``plain`` (timm's classification task), ``rspc`` (the package's task) or ``authors`` (their RVT recipe)."""
    model = _model(model_name, img_size, device)
    if kind == 'plain':
        task = PlainClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    elif kind == 'rspc':
        task = RSPCTask(model, nn.CrossEntropyLoss(), img_size=img_size, verbose=False, device=device)
    elif kind == 'authors':
        return _authors_recipe_step(model, batch_size, img_size, device)
    else:
        raise ValueError(kind)
    return _stepper(task, device, batch_size, img_size)


class _QuantileStraightThrough(torch.autograd.Function):
    """The authors' binarisation: a full-sort ``torch.quantile`` threshold, hardtanh straight-through backward."""

    @staticmethod
    def forward(ctx, scores, ratio):
        return (scores > torch.quantile(scores, ratio, dim=1, keepdim=True)).float()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-1., 1.), None


def _authors_recipe_step(model: nn.Module, batch_size: int, img_size: int, device: torch.device):
    """The authors' RVT training step, assembled from this package's parts (same C, noise, blend and loss).

    Differences from the package's step, each one of theirs: RSPC runs twice per step and the first backward's
    gradients are zeroed before the second; the keep mask thresholds with ``torch.quantile`` (a full sort); every
    block's output on the paired batch is stored during the forward and the alignment loss is computed afterwards.
    """
    task = RSPCTask(model, nn.CrossEntropyLoss(), verbose=False, device=device)
    corruption = task.corruption
    corruption_model = corruption.corruption_model
    blocks = [model.get_submodule(name) for name in find_blocks(model)]
    stored: List[torch.Tensor] = []
    for block in blocks:
        block.register_forward_hook(lambda module, args, output: stored.append(output))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    corruption_optimizer = torch.optim.SGD(corruption_model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(batch_size)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(device)
    target = torch.randint(0, 1000, (batch_size,), generator=gen).to(device)
    criterion = nn.CrossEntropyLoss()

    def rspc_pass():
        scores = corruption_model.score(x).float()
        keep = reverse_gradient(_QuantileStraightThrough.apply(scores, corruption_model.ratio))
        pixel_mask = patch_mask_to_pixels(keep, corruption_model.grid_size, corruption_model.patch_size)
        noise = draw_noise(x, 'normalized')
        corrupted = blend_noise(x, pixel_mask, noise, corruption.lower, corruption.upper)
        stored.clear()
        logits = model(torch.cat([corrupted, x]))
        align = mean_over_blocks([paired_mse(f) for f in stored])
        return criterion(logits[batch_size:], target) + 0.005 * align

    def step():
        rspc_pass().backward()
        optimizer.zero_grad(set_to_none=True)
        corruption_optimizer.zero_grad(set_to_none=True)
        rspc_pass().backward()
        optimizer.step()
        corruption_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        corruption_optimizer.zero_grad(set_to_none=True)
    return step


def _step_row(model_name: str, batch: int, args, device) -> Dict:
    runs = {
        'plain_B': make_step('plain', model_name, batch, args.img_size, device),
        'plain_2B': make_step('plain', model_name, 2 * batch, args.img_size, device),
        'rspc_B': make_step('rspc', model_name, batch, args.img_size, device),
    }
    t = interleaved_medians(runs, args.warmup, args.repeats, device)
    return dict(model=model_name, batch=batch, **{f'{k}_s': v for k, v in t.items()},
                rspc_vs_plain_B=t['rspc_B'] / t['plain_B'], rspc_vs_floor=t['rspc_B'] / t['plain_2B'],
                floor_vs_plain_B=t['plain_2B'] / t['plain_B'])


def bench_step(args, device) -> Dict:
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            rows.append(_step_row(model_name, batch, args, device))
            _progress(rows[-1])
    return dict(rows=rows, target_rspc_vs_floor=1.02)


def bench_authors(args, device) -> Dict:
    rows = []
    for model_name in args.models[:1]:
        batch = args.batch_sizes[0]
        runs = {
            'package': make_step('rspc', model_name, batch, args.img_size, device),
            'authors_recipe': make_step('authors', model_name, batch, args.img_size, device),
        }
        t = interleaved_medians(runs, args.warmup, args.repeats, device)
        rows.append(dict(model=model_name, batch=batch, package_s=t['package'], authors_recipe_s=t['authors_recipe'],
                         speedup=t['authors_recipe'] / t['package']))
        _progress(rows[-1])
    return dict(rows=rows, target_speedup=1.95)


# --- peak memory -------------------------------------------------------------------------------------------------

def _proc_status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith(field + ':'))
    return int(line.split()[1]) * 1024  # reported in kB


def _peak_memory_child(kind: str, model_name: str, batch: int, img_size: int, device: torch.device, steps: int):
    """Peak memory of steady-state steps: after one step (optimiser state exists), the peak is reset and measured."""
    step = make_step(kind, model_name, batch, img_size, device)
    step()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # Linux: writing 5 to clear_refs resets the resident-set high-water mark (VmHWM) to the current RSS, so that
        # the import of torch (which peaks higher than a small model's step) does not hide the step's peak.
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    for _ in range(steps):
        step()
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_bytes('VmHWM')


def _memory_row(model_name: str, batch: int, args, device) -> Dict:
    peaks = {}
    for kind, factor in (('plain', 2), ('rspc', 1), ('plain', 1)):
        label = f'{kind}_{"2B" if factor == 2 else "B"}'
        if device.type == 'cuda':
            peaks[label] = _peak_memory_child(kind, model_name, factor * batch, args.img_size, device, 2)
            torch.cuda.empty_cache()
        else:
            cmd = [sys.executable, os.path.abspath(__file__), '--_peak-child', kind, model_name,
                   str(factor * batch), str(args.img_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))
            peaks[label] = int(out.stdout.strip().splitlines()[-1])
    return dict(model=model_name, batch=batch, **{f'{k}_bytes': v for k, v in peaks.items()},
                rspc_vs_floor=peaks['rspc_B'] / peaks['plain_2B'], rspc_vs_plain_B=peaks['rspc_B'] / peaks['plain_B'])


def _memory_measure(device) -> str:
    return ('torch.cuda.max_memory_allocated' if device.type == 'cuda'
            else 'peak RSS (VmHWM) of a fresh process per configuration, reset after its first step')


def bench_memory(args, device) -> Dict:
    rows = []
    for model_name in args.models:
        rows.append(_memory_row(model_name, args.batch_sizes[0], args, device))
        _progress(rows[-1])
    return dict(rows=rows, measure=_memory_measure(device), target_rspc_vs_floor=1.02)


def bench_families(args, device) -> Dict:
    """Time and peak memory of the RSPC step on hierarchical and convolutional families, and C's size."""
    rows = []
    for model_name in args.family_models:
        batch = args.batch_sizes[0]
        task = RSPCTask(_model(model_name, args.img_size, torch.device('cpu')), nn.CrossEntropyLoss(),
                        img_size=args.img_size, verbose=False)
        corruption = task.corruption_model
        c_params = sum(p.numel() for p in corruption.parameters())
        backbone_params = sum(p.numel() for p in task.get_eval_model().parameters())
        time_row = _step_row(model_name, batch, args, device)
        memory_row = _memory_row(model_name, batch, args, device)
        rows.append(dict(
            model=model_name, batch=batch, c_patch=corruption.patch_size, c_grid=f'{corruption.grid_size[0]}x'
            f'{corruption.grid_size[1]}', c_params=c_params, c_share_pct=100 * c_params / backbone_params,
            time_rspc_vs_floor=time_row['rspc_vs_floor'], memory_rspc_vs_floor=memory_row['rspc_vs_floor'],
            rspc_B_s=time_row['rspc_B_s'], plain_2B_s=time_row['plain_2B_s'],
            rspc_B_bytes=memory_row['rspc_B_bytes'], plain_2B_bytes=memory_row['plain_2B_bytes']))
        _progress(rows[-1])
    return dict(rows=rows, measure=_memory_measure(device), target_rspc_vs_floor=1.05)


# --- inference ---------------------------------------------------------------------------------------------------

def bench_inference(args, device) -> Dict:
    from timm.layers import set_fused_attn
    rows = []
    batch = 2 * args.batch_sizes[0]
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    for model_name in args.models:
        models = {}
        for fused in (True, False):
            set_fused_attn(fused)  # read by timm's and this package's attention modules when they are built
            models['fused' if fused else 'eager'] = _model(model_name, args.img_size, device).eval()
        set_fused_attn(True)

        def forward(model):
            def run():
                with torch.inference_mode():
                    model(x)
            return run
        t = interleaved_medians({k: forward(m) for k, m in models.items()}, args.warmup, args.repeats, device)
        rows.append(dict(model=model_name, batch=batch, fused_img_s=batch / t['fused'], eager_img_s=batch / t['eager'],
                         speedup=t['eager'] / t['fused']))
        _progress(rows[-1])
    return dict(rows=rows)


# --- kernels and syncs (CUDA) ------------------------------------------------------------------------------------

def bench_kernels(args, device) -> Dict:
    if device.type != 'cuda':
        return dict(skipped='no CUDA device: the Triton kernels run on CUDA only (the interpreter is not a timing)')
    from timm_rspc.kernels.paired_distance import fused_paired_mse
    from timm_rspc.kernels.patch_noise import draw_seed, fused_patch_noise
    from timm_rspc.method import normalized_pixel_range
    rows = []
    batch, size, patch = 2 * args.batch_sizes[0], args.img_size, 16
    grid = (size // patch, size // patch)
    lower, upper = normalized_pixel_range((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device=device)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(batch, 3, size, size, device=device, dtype=dtype, requires_grad=True)
        keep = (torch.rand(batch, grid[0] * grid[1], device=device) > 0.1).float().requires_grad_(True)
        seed = draw_seed(device)
        grad = torch.randn(batch, 3, size, size, device=device, dtype=dtype)

        def reference():
            noise = draw_noise(x.detach(), 'normalized')
            out = blend_noise(x, patch_mask_to_pixels(keep, grid, patch), noise, lower, upper)
            out.backward(grad)

        def fused():
            fused_patch_noise(x, keep, patch, lower, upper, seed=seed).backward(grad)
        t = interleaved_medians({'reference': reference, 'fused': fused}, args.warmup, args.repeats * 5, device)
        rows.append(dict(kernel='patch_noise fwd+bwd', dtype=str(dtype).replace('torch.', ''),
                         shape=list(x.shape), speedup=t['reference'] / t['fused']))
        _progress(rows[-1])
        features = torch.randn(batch, 197, 192, device=device, dtype=dtype, requires_grad=True)

        def reference_mse():
            paired_mse(features).backward()

        def fused_mse():
            fused_paired_mse(features).backward()
        t = interleaved_medians({'reference': reference_mse, 'fused': fused_mse}, args.warmup, args.repeats * 5,
                                device)
        rows.append(dict(kernel='paired_mse fwd+bwd', dtype=str(dtype).replace('torch.', ''),
                         shape=list(features.shape), speedup=t['reference'] / t['fused']))
        _progress(rows[-1])
    return dict(rows=rows, target_speedup=1.5)


def sync_row(model_name: str, batch: int, img_size: int, device: torch.device) -> Dict:
    """One RSPC step under ``set_sync_debug_mode('error')``, after an unchecked first step (the kernels' first-use
    self-checks synchronise once, by design). Also used by benchmarks/gpu_check.py for every model."""
    step = make_step('rspc', model_name, batch, img_size, device)
    step()
    torch.cuda.set_sync_debug_mode('error')
    try:
        step()
        return dict(model=model_name, host_device_syncs='none (set_sync_debug_mode error did not raise)', ok=True)
    except RuntimeError as e:
        return dict(model=model_name, host_device_syncs=f'sync found: {str(e).splitlines()[0]}', ok=False)
    finally:
        torch.cuda.set_sync_debug_mode('default')


def bench_sync(args, device) -> Dict:
    if device.type != 'cuda':
        return dict(skipped='no CUDA device')
    return dict(host_device_syncs=sync_row(args.models[0], args.batch_sizes[0], args.img_size, device)[
        'host_device_syncs'])


# --- report ------------------------------------------------------------------------------------------------------

def _progress(row: Dict) -> None:
    print('  ' + ', '.join(f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()),
          flush=True)


def describe_machine(device: torch.device) -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info = dict(cpu=cpu, logical_cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                device=str(device))
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def _table(rows: List[Dict], columns: List[str]) -> List[str]:
    def fmt(v):
        return f'{v:.3f}' if isinstance(v, float) else str(v)
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |' for r in rows]
    return lines


def _provenance(run: Dict) -> str:
    machine = run['machine']
    return (f"`{' '.join(['python benchmarks/run.py', *run['argv']])}` on "
            f"{machine['cpu']} ({machine['logical_cores']} logical cores, {machine['torch_threads']} torch threads"
            f"{', ' + machine['gpu'] if 'gpu' in machine else ''}), torch {machine['torch']}, timm {machine['timm']}, "
            f"image size {run['img_size']}, median of {run['repeats']} interleaved repeats")


def write_report(results: Dict, path_md: str) -> None:
    sections = results['sections']
    by_run: Dict[str, List[str]] = {}  # provenance -> the sections it measured, in report order
    for name, section in sections.items():
        by_run.setdefault(_provenance(section.get('run', results)), []).append(name)
    lines = ['# Benchmark results', '']
    lines += [f"Sections {', '.join(f'`{n}`' for n in names)}: measured by {where}." for where, names in by_run.items()]
    lines.append('')
    if 'step' in sections:
        lines += ['## RSPC step vs plain steps (time)', '',
                  'Floor: `rspc_vs_floor` = RSPC step at B / plain step at 2B; target <= 1.02.', '']
        lines += _table(sections['step']['rows'], ['model', 'batch', 'plain_B_s', 'plain_2B_s', 'rspc_B_s',
                                                   'rspc_vs_plain_B', 'rspc_vs_floor', 'floor_vs_plain_B'])
        lines.append('')
    if 'memory' in sections:
        lines += ['## Peak memory', '', f"Measured as: {sections['memory']['measure']}; target rspc_vs_floor <= 1.02.",
                  '']
        lines += _table(sections['memory']['rows'], ['model', 'batch', 'plain_B_bytes', 'plain_2B_bytes',
                                                     'rspc_B_bytes', 'rspc_vs_floor', 'rspc_vs_plain_B'])
        lines.append('')
    if 'authors' in sections:
        lines += ["## The package's step vs the authors' RVT recipe", '', 'Target speedup >= 1.95.', '']
        lines += _table(sections['authors']['rows'], ['model', 'batch', 'package_s', 'authors_recipe_s', 'speedup'])
        lines.append('')
    if 'inference' in sections:
        lines += ['## Inference: fused attention vs the eager (non-fused) path', '']
        lines += _table(sections['inference']['rows'], ['model', 'batch', 'fused_img_s', 'eager_img_s', 'speedup'])
        lines.append('')
    if 'families' in sections:
        lines += ['## Hierarchical and convolutional families', '',
                  f"RSPC step at B vs plain step at 2B, time and peak memory ({sections['families']['measure']}); "
                  'target <= 1.05. C: its patch size, grid and parameters (and their fraction of the backbone).', '']
        lines += _table(sections['families']['rows'], [
            'model', 'batch', 'c_patch', 'c_grid', 'c_params', 'c_share_pct', 'rspc_B_s', 'plain_2B_s',
            'time_rspc_vs_floor', 'rspc_B_bytes', 'plain_2B_bytes', 'memory_rspc_vs_floor'])
        lines.append('')
    for name, title in (('kernels', 'Triton kernels vs PyTorch references'), ('sync', 'Host-device syncs')):
        if name in sections:
            lines += [f'## {title}', '']
            section = sections[name]
            if 'rows' in section:
                lines += _table(section['rows'], ['kernel', 'dtype', 'shape', 'speedup'])
            else:
                lines.append(f"- {section.get('skipped') or section.get('host_device_syncs')}")
            lines.append('')
    previous = open(path_md).read() if os.path.exists(path_md) else ''
    for block in OTHER_SCRIPTS_BLOCK.finditer(previous):   # e.g. gpu_check.py's tables (another card, maybe) stay
        lines += [block.group(0), '']
    with open(path_md, 'w') as f:
        f.write('\n'.join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(STEP_MODELS))
    parser.add_argument('--family-models', nargs='+', default=list(FAMILY_MODELS))
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[8, 16])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: unchanged)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--only', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--quick', action='store_true', help='tiny sizes, one repeat: checks that every section runs')
    parser.add_argument('--output', default=None,
                        help='folder for RESULTS.md and results.json (default: benchmarks/, the committed figures; '
                             'with --quick a temporary folder, so that a smoke run never replaces them)')
    parser.add_argument('--_peak-child', nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args._peak_child:
        kind, model_name, batch, img_size = args._peak_child
        print(_peak_memory_child(kind, model_name, int(batch), int(img_size), device, steps=2))
        return 0
    if args.quick:
        args.img_size, args.batch_sizes, args.warmup, args.repeats = 32, [2], 0, 1
    if args.output is None:
        args.output = os.path.join(tempfile.gettempdir(), 'timm-rspc-benchmarks-quick') if args.quick else HERE
    run = dict(argv=sys.argv[1:] if argv is None else list(argv), machine=describe_machine(device),
               img_size=args.img_size, repeats=args.repeats)
    runners = dict(step=bench_step, memory=bench_memory, authors=bench_authors, inference=bench_inference,
                   kernels=bench_kernels, sync=bench_sync, families=bench_families)
    measured = {}
    for name in args.only:
        print(f'[{name}]', flush=True)
        measured[name] = runners[name](args, device)
    results = dict(run, sections=measured)
    previous_path = os.path.join(args.output, 'results.json')
    if set(args.only) != set(SECTIONS) and os.path.isfile(previous_path):
        # A run of some sections updates those and keeps the others, each kept one with the run that measured it.
        with open(previous_path) as f:
            previous = json.load(f)
        kept = {name: dict(section, run=section.get('run') or {k: previous[k] for k in run})
                for name, section in previous['sections'].items() if name not in measured}
        results = dict(run, sections={**kept, **measured})
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    write_report(results, os.path.join(args.output, 'RESULTS.md'))
    print(f"wrote {os.path.join(args.output, 'RESULTS.md')}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
