"""``timm-rspc bench``: robustness benchmarks of one or more models, or ``--compare`` of finished results.

    timm-rspc bench --model rvt_small_plus.rspc_in1k --pretrained --imagenet-c /data/imagenet-c --imagenet /data/val
    timm-rspc bench --compare output/bench/a/results.json output/bench/b/results.json
    torchrun --nproc_per_node=8 -m timm_rspc.cli bench ...            # images split over the processes
"""
import argparse
import os
import re
import sys

from timm.utils import ParseKwargs

from ._errors import CommandFailed, reported_errors

# Data set argument -> the layout its folder must have (the help text).
DATASETS = {
    'imagenet': 'ImageNet validation set: <wnid>/<image>',
    'imagenet_c': 'ImageNet-C: <corruption>/<severity>/<wnid>/<image> (or flat, see --imagenet-c-labels)',
    'imagenet_a': 'ImageNet-A: <wnid>/<image>',
    'imagenet_r': 'ImageNet-R: <wnid>/<image>',
    'imagenet_p': 'ImageNet-P: <perturbation>/<wnid>/<video>.mp4 (needs the video extra)',
    'imagenet_sketch': 'ImageNet-Sketch: <wnid>/<image>',
    'imagenet_v2': 'ImageNet-V2: <class index>/<image>',
    'cifar10_c': 'CIFAR-10-C: <corruption>.npy and labels.npy',
    'cifar100_c': 'CIFAR-100-C: <corruption>.npy and labels.npy',
}
DATASET_FLAGS = tuple(DATASETS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Model and weights')
    g.add_argument('--model', nargs='+', metavar='NAME', help='timm model name(s); several give one table')
    source = g.add_mutually_exclusive_group()
    source.add_argument('--pretrained', action='store_true', help="the registry's pretrained weights of --model")
    source.add_argument('--checkpoint', nargs='+', metavar='PATH',
                        help='checkpoint file(s), one per --model (non-EMA weights, loaded strictly)')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='extra model build arguments, e.g. img_size=224')
    d = parser.add_argument_group('Data sets (give any of them)')
    for flag, layout in DATASETS.items():
        d.add_argument('--' + flag.replace('_', '-'), dest=flag, metavar='DIR', help=layout)
    d.add_argument('--imagenet-c-labels', metavar='FILE',
                   help='label file (<image file name> <class index> lines) for a flat ImageNet-C layout')
    d.add_argument('--imagenet-c-transform', choices=('authors', 'model'), default='authors',
                   help="authors: center crop of the 224 images, no resize (default); model: the model's eval "
                        'transform')
    d.add_argument('--imagenet-p-reference', metavar='JSON',
                   help="AlexNet's flip probabilities and top-5 distances per perturbation, to report mFR / mT5D")
    d.add_argument('--allow-partial', action='store_true',
                   help='evaluate what is there when corruptions / perturbations are missing (result marked partial)')
    r = parser.add_argument_group('Run')
    r.add_argument('--output', metavar='DIR', help='run folder (default: output/bench/<model>); one per model')
    r.add_argument('--resume', action='store_true', help='continue an interrupted run in its folder')
    r.add_argument('-b', '--batch-size', type=int, default=128)
    r.add_argument('-j', '--workers', type=int, default=4)
    r.add_argument('--device', help='default: cuda (LOCAL_RANK under torchrun) if available, else cpu')
    r.add_argument('--amp', choices=('bf16', 'fp16'), help='autocast dtype (default: float32)')
    r.add_argument('--no-channels-last', action='store_true', help='keep NCHW on GPU (channels_last is the default)')
    r.add_argument('--no-plot', action='store_true', help='do not write results.png')
    r.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--compare', nargs='+', metavar='RESULTS_JSON',
                        help='print finished results side by side (deltas to the first) and exit')
    parser.set_defaults(_parser=parser)


def _output_folder(args: argparse.Namespace, model: str, index: int) -> str:
    if args.output is None:
        return os.path.join('output', 'bench', re.sub(r'[^\w.-]+', '_', model))
    return args.output if len(args.model) == 1 else os.path.join(args.output, f'{index}-{model}')


def run(args: argparse.Namespace) -> int:
    try:
        with reported_errors('bench'):
            return _run(args)
    except ImportError as e:  # an optional extra (video, plot) is missing: the message names it
        print(f'timm-rspc bench: error: {e}', file=sys.stderr)
        raise CommandFailed(2) from None


def _run(args: argparse.Namespace) -> int:
    from timm_rspc.bench import compare
    if args.compare:
        if args.model:
            args._parser.error('--compare reads finished results; drop --model')
        print(compare(args.compare))
        return 0
    if not args.model:
        args._parser.error('--model NAME is required (or --compare RESULTS_JSON ...)')
    if args.checkpoint and len(args.checkpoint) != len(args.model):
        args._parser.error(f'give one --checkpoint per --model ({len(args.model)} models, '
                           f'{len(args.checkpoint)} checkpoints)')
    if not any(getattr(args, flag) for flag in DATASET_FLAGS):
        args._parser.error('give at least one data set folder: ' + ', '.join(
            '--' + f.replace('_', '-') for f in DATASET_FLAGS))
    from timm.utils.distributed import init_distributed_device_so, is_distributed_env
    from timm_rspc.bench import run_benchmark
    device = args.device
    if is_distributed_env():
        device = str(init_distributed_device_so(device or ('cuda' if _cuda() else 'cpu'))['device'])
    results = []
    for i, model in enumerate(args.model):
        results.append(run_benchmark(
            model, _output_folder(args, model, i), pretrained=args.pretrained,
            checkpoint=args.checkpoint[i] if args.checkpoint else None, model_kwargs=dict(args.model_kwargs or {}),
            imagenet_c_labels=args.imagenet_c_labels, imagenet_c_transform=args.imagenet_c_transform,
            imagenet_p_reference=args.imagenet_p_reference, allow_partial=args.allow_partial,
            batch_size=args.batch_size, workers=args.workers, device=device, amp=args.amp,
            channels_last=False if args.no_channels_last else None, resume=args.resume,
            progress=not args.no_progress, plot=not args.no_plot,
            **{flag: getattr(args, flag) for flag in DATASET_FLAGS}))
    if len(results) > 1 and _is_first_process():
        print()
        print(compare(results))
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _is_first_process() -> bool:
    import torch.distributed as dist
    return not dist.is_initialized() or dist.get_rank() == 0
