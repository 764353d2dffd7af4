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
    'corrupt': "any image folder <class>/<image> (ImageNet val, your own), evaluated under ImageNet-C's corruptions "
               "generated on the device (after the model's resize / crop, before normalisation); one split per "
               'corruption x severity',
}
DATASET_FLAGS = tuple(DATASETS)


def _old_amp(text: str) -> str:
    """``--amp`` alone (timm's spelling: --amp-dtype picks the dtype); ``--amp bf16|fp16`` is the old spelling."""
    if text not in ('bf16', 'fp16'):
        raise argparse.ArgumentTypeError(f"--amp takes no value (choose the dtype with --amp-dtype), got '{text}'")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Model and weights')
    g.add_argument('--model', '-m', action='extend', nargs='+', metavar='NAME',
                   help='timm model name; repeat (--model A --model B) to benchmark several into one table')
    source = g.add_mutually_exclusive_group()
    source.add_argument('--pretrained', action='store_true', help="the registry's pretrained weights of --model")
    source.add_argument('--checkpoint', action='extend', nargs='+', metavar='PATH',
                        help='checkpoint file, one per --model in the same order (non-EMA weights unless --use-ema, '
                             'loaded strictly); the training arguments stored in it, or in the args.yaml beside it, '
                             'build the model (model_kwargs, num_classes) and set the input size unless given here')
    g.add_argument('--use-ema', action='store_true', help="the checkpoint's EMA weights (default: non-EMA)")
    g.add_argument('--num-classes', type=int, metavar='N', help='number of classes (default: checkpoint / cfg)')
    g.add_argument('--img-size', type=int, metavar='N',
                   help="input image size (default: the checkpoint's, else the size the model was built for)")
    g.add_argument('--input-size', type=int, nargs=3, metavar='N', help='input dimensions C H W, e.g. 3 224 224')
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
    c = parser.add_argument_group('Corruptions on the fly (--corrupt DIR)')
    from .corrupt import add_corruption_choice, add_jpeg_choice
    add_corruption_choice(c)
    add_jpeg_choice(c)
    reference = c.add_mutually_exclusive_group()
    reference.add_argument('--reference-model', metavar='NAME',
                           help='CE / mCE relative to this model, evaluated in the same run on the same corrupted '
                                'images (its pretrained weights, or --reference-checkpoint)')
    reference.add_argument('--reference-results', metavar='PATH',
                           help="CE / mCE relative to an earlier 'bench --corrupt' run's results.json on the same "
                                'folder, seed, corruptions and severities')
    c.add_argument('--reference-checkpoint', metavar='PATH', help='checkpoint of --reference-model')
    r = parser.add_argument_group('Run')
    r.add_argument('--output', metavar='DIR', help='run folder (default: output/bench/<model>); one per model')
    r.add_argument('--resume', action='store_true', help='continue an interrupted run in its folder')
    r.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='images per batch (default 128)')
    from timm_rspc.bench.evaluate import WORKERS
    r.add_argument('-j', '--workers', type=int, default=WORKERS, metavar='N',
                   help=f'data loading processes (default {WORKERS}: 4, or the CPUs available if fewer)')
    r.add_argument('--device', help='default: cuda (LOCAL_RANK under torchrun) if available, else cpu')
    r.add_argument('--amp', nargs='?', const=True, default=False, type=_old_amp, metavar='',
                   help='mixed precision (autocast) in --amp-dtype (default: float32)')
    r.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default='float16',
                   help='autocast dtype of --amp (default: float16)')
    r.add_argument('--no-channels-last', action='store_true', help='keep NCHW on GPU (channels_last is the default)')
    r.add_argument('--no-plot', action='store_true', help='do not write results.png')
    r.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--compare', nargs='+', metavar='RESULTS_JSON',
                        help='print finished results side by side (deltas to the first) and exit')
    parser.add_argument('--label', action='extend', nargs='+', default=[], metavar='TEXT',
                        help='row name of each --model / --compare result in the table, in the same order '
                             '(default: the model name, with the checkpoint and its folders where names collide)')
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
    except KeyboardInterrupt as e:  # BenchmarkInterrupted says what is saved
        if _is_first_process():
            print(f'\n{_interrupted_line(args, e)}', file=sys.stderr)
        raise CommandFailed(130) from None


def _interrupted_line(args: argparse.Namespace, e: KeyboardInterrupt) -> str:
    done = getattr(args, '_finished_models', [])
    finished = getattr(e, 'finished', 0)
    saved = [f'{len(done)} model(s) finished ({", ".join(done)})'] if done else []
    if finished:
        saved.append(f"{finished} of {e.total} splits finished and saved in '{e.output}'")
    if not saved:
        return 'timm-rspc bench: interrupted before any split finished; nothing saved, run the same command again.'
    return f"timm-rspc bench: interrupted: {'; '.join(saved)}; continue with: {_command_line(args, resume=True)}"


def _command_line(args: argparse.Namespace, resume: bool = False) -> str:
    """The command that gives these arguments (non-default values only), for the resume hint."""
    import shlex
    words = ['timm-rspc', 'bench']
    for action in args._parser._actions:
        if not action.option_strings or action.dest in ('help', '_parser'):
            continue
        value = getattr(args, action.dest, None)
        if value == action.default or value is None or value is False:
            continue
        flag = action.option_strings[-1] if action.option_strings[0] in ('-b', '-j', '-m') else \
            action.option_strings[0]
        if value is True:
            words.append(flag)
        elif isinstance(value, dict):
            words += [flag] + [f'{k}={v}' for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            words += [flag] + [str(v) for v in value]
        else:
            words += [flag, str(value)]
    if resume and not args.resume:
        words.append('--resume')
    return shlex.join(words)


def _run(args: argparse.Namespace) -> int:
    from timm_rspc.bench import compare
    args._finished_models = []
    if args.compare:
        if args.model:
            args._parser.error('--compare reads finished results; drop --model')
        if args.label and len(args.label) != len(args.compare):
            raise ValueError(f'{len(args.compare)} --compare results but {len(args.label)} --label; give one per '
                             'result or none.')
        print(compare(args.compare, labels=args.label))
        return 0
    if not args.model:
        args._parser.error('--model NAME is required (or --compare RESULTS_JSON ...)')
    if args.label and len(args.label) != len(args.model):
        raise ValueError(f'{len(args.model)} --model but {len(args.label)} --label; give one per model or none.')
    if args.label and len(set(args.label)) != len(args.label):
        raise ValueError(f'the rows need distinct --label values, got {args.label}.')
    if args.checkpoint and len(args.checkpoint) != len(args.model):
        args._parser.error(f'give one --checkpoint per --model ({len(args.model)} models, '
                           f'{len(args.checkpoint)} checkpoints)')
    if not any(getattr(args, flag) for flag in DATASET_FLAGS):
        args._parser.error('give at least one data set folder: ' + ', '.join(
            '--' + f.replace('_', '-') for f in DATASET_FLAGS))
    for path in args.checkpoint or ():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--checkpoint file '{path}' does not exist.")
    if args.use_ema and not args.checkpoint:
        raise ValueError('--use-ema picks the EMA weights of a checkpoint file; give --checkpoint.')
    if args.img_size is not None and args.input_size is not None:
        raise ValueError('give --img-size or --input-size, not both.')
    from timm_rspc.models.build import check_model_name
    for model in args.model:
        check_model_name(model)
    amp = args.amp if isinstance(args.amp, str) else (args.amp_dtype if args.amp else None)
    from timm.utils.distributed import init_distributed_device_so, is_distributed_env
    from timm_rspc.bench import run_benchmark
    device = args.device
    if is_distributed_env():
        device = str(init_distributed_device_so(device or ('cuda' if _cuda() else 'cpu'))['device'])
    from .corrupt import corruption_choice
    corrupt_options = corruption_choice(args, reference_model=args.reference_model,
                                        reference_checkpoint=args.reference_checkpoint,
                                        reference_results=args.reference_results,
                                        jpeg_quality=args.corrupt_jpeg_quality)
    results = []
    for i, model in enumerate(args.model):
        results.append(run_benchmark(
            model, _output_folder(args, model, i), pretrained=args.pretrained,
            checkpoint=args.checkpoint[i] if args.checkpoint else None, model_kwargs=dict(args.model_kwargs or {}),
            num_classes=args.num_classes, img_size=args.img_size, input_size=args.input_size, use_ema=args.use_ema,
            imagenet_c_labels=args.imagenet_c_labels, imagenet_c_transform=args.imagenet_c_transform,
            imagenet_p_reference=args.imagenet_p_reference, allow_partial=args.allow_partial,
            batch_size=args.batch_size, workers=args.workers, device=device, amp=amp,
            channels_last=False if args.no_channels_last else None, resume=args.resume,
            progress=not args.no_progress, plot=not args.no_plot, corrupt_options=corrupt_options,
            **{flag: getattr(args, flag) for flag in DATASET_FLAGS}))
        args._finished_models.append(model)
    if len(results) > 1 and _is_first_process():
        print()
        from timm_rspc.bench.compare import default_labels
        files = [os.path.join(_output_folder(args, m, i), 'results.json') for i, m in enumerate(args.model)]
        print(compare(results, labels=args.label or default_labels(results, files)))
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _is_first_process() -> bool:
    import torch.distributed as dist
    return not dist.is_initialized() or dist.get_rank() == 0
