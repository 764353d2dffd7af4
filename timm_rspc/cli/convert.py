"""``timm-rspc convert``: a training checkpoint -> a validated safetensors state dict and its SHA-256 record."""
import argparse
import json
import os

from timm.utils import ParseKwargs

from ._errors import reported_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('checkpoint', metavar='CHECKPOINT',
                        help='release .pth.tar, timm-rspc train checkpoint, state dict or .safetensors')
    parser.add_argument('output', metavar='OUTPUT', nargs='?',
                        help='output .safetensors (default: next to CHECKPOINT, named after it)')
    parser.add_argument('--model', metavar='NAME', help='timm model name (default: the one the checkpoint records)')
    parser.add_argument('--ema', action='store_true', help='keep the EMA weights instead of the non-EMA ones')
    parser.add_argument('--num-classes', type=int, metavar='N', help='number of classes (default: checkpoint / cfg)')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help='extra model build arguments, e.g. img_size=32')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output and record')
    parser.add_argument('--json', action='store_true', help='print the record as JSON instead of text')


def default_output(checkpoint: str, ema: bool) -> str:
    """``dir/rspc_rvt_small.pth.tar`` -> ``dir/rspc_rvt_small[_ema].safetensors``."""
    stem = os.path.basename(checkpoint)
    for ext in ('.pth.tar', '.safetensors', '.pth', '.pt', '.bin', '.tar'):
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
            break
    return os.path.join(os.path.dirname(checkpoint), stem + ('_ema' if ema else '') + '.safetensors')


def run(args: argparse.Namespace) -> int:
    with reported_errors('convert'):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from timm_rspc.hub import convert_checkpoint
    output = args.output or default_output(args.checkpoint, args.ema)
    record = convert_checkpoint(args.checkpoint, output, model_name=args.model, use_ema=args.ema,
                                num_classes=args.num_classes, model_kwargs=dict(args.model_kwargs or {}),
                                overwrite=args.overwrite)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{record['model']}: {record['weights']} weights of {record['source']} -> {output}")
    print(f"  {record['num_params'] / 1e6:.2f}M parameters, {record['num_classes']} classes, loaded strictly")
    print(f"  sha256 {record['sha256']}")
    print(f"  record {output[:-len('.safetensors')]}.json")
    return 0
