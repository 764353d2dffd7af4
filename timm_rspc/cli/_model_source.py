"""Command-line options shared by ``export`` and ``push``: which model, and where its weights come from."""
import argparse
from typing import Any, Dict

from timm.utils import ParseKwargs


def add_model_source_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group('Model and weights')
    g.add_argument('--model', metavar='NAME',
                   help='timm model name; arch.tag for released weights (e.g. rvt_small_plus.rspc_in1k)')
    source = g.add_mutually_exclusive_group()
    source.add_argument('--checkpoint', metavar='PATH',
                        help='checkpoint file: a release .pth.tar, a timm-rspc train checkpoint, a state dict or '
                             '.safetensors (read weights-only, loaded strictly)')
    source.add_argument('--pretrained', action='store_true', help="the registry's pretrained weights of --model")
    g.add_argument('--ema', action='store_true',
                   help="the checkpoint's EMA weights instead of its non-EMA weights (the default)")
    g.add_argument('--num-classes', type=int, metavar='N', help='number of classes (default: checkpoint / cfg)')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='extra model build arguments, e.g. img_size=32')
    card = parser.add_argument_group('Model card')
    card.add_argument('--results', metavar='JSON',
                      help='results JSON of your evaluation: {"results": {"imagenet_top1": 80.1, ...}}')
    card.add_argument('--args-yaml', metavar='PATH', help="the training run's args.yaml (recipe shown in the card)")
    card.add_argument('--license', metavar='ID', help='Hub license id of your own weights (default: apache-2.0)')


def check_model_source(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.model:
        parser.error('--model NAME is required')
    if not args.checkpoint and not args.pretrained:
        parser.error('give the weights: --checkpoint PATH or --pretrained')


def model_source_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """Keyword arguments of `export_model` / `push_model` from the parsed options."""
    return dict(
        model_name=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, use_ema=args.ema,
        num_classes=args.num_classes, model_kwargs=dict(args.model_kwargs or {}), results=args.results,
        args_yaml=args.args_yaml, license=args.license,
    )
