"""Training with timm's ``train.py`` flags, plus ``--rspc`` to train with RSPC.

From the shell: ``timm-rspc train ...``, ``python -m timm_rspc.train ...`` or
``torchrun --nproc_per_node=N -m timm_rspc.train ...``. From Python::

    from timm_rspc.train import parse_args, train
    args, _ = parse_args(['--data-dir', 'data', '--model', 'vit_tiny_patch16_224', '--rspc'])
    result = train(args)
"""
from .args import ConfigError, build_parser, parse_args
from .trainer import TrainResult, train


def main(argv=None, prog: str = 'python -m timm_rspc.train') -> int:
    """Command-line entry point: parse, train, and turn configuration mistakes into one clear error line."""
    import sys
    from timm.utils import setup_default_logging
    setup_default_logging()
    try:
        args, _ = parse_args(argv, prog=prog)
        train(args)
    except ConfigError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2
    return 0
