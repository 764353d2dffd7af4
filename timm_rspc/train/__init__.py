"""Training with timm's ``train.py`` flags, plus ``--rspc`` to train with RSPC.

From the shell: ``timm-rspc train ...``, ``python -m timm_rspc.train ...`` or
``torchrun --nproc_per_node=N -m timm_rspc.train ...``. From Python::

    from timm_rspc.train import parse_args, train
    args, _ = parse_args(['--data-dir', 'data', '--model', 'vit_tiny_patch16_224', '--rspc'])
    result = train(args)
"""
from .args import ConfigError, build_parser, parse_args
from .trainer import TrainingInterrupted, TrainResult, train

INTERRUPTED_EXIT_STATUS = 130  # the shell's status for a process stopped by SIGINT (128 + 2)


def main(argv=None, prog: str = 'python -m timm_rspc.train') -> int:
    """Command-line entry point: parse, train, and report the foreseeable errors (a flag, file or folder that cannot
    work, a full disk) in one line with exit status 2; ``--verbose`` shows their traceback too. Ctrl-C is one line
    saying what was saved and how to continue, with status 130, so ``train && next`` stops."""
    import os
    import sys
    from timm.utils import setup_default_logging
    from timm_rspc._timm_compat import TimmVersionError
    from .output import DiskFullError
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_default_logging()
    try:
        args, _ = parse_args(argv, prog=prog)
        train(args)
    except (ConfigError, DiskFullError, TimmVersionError) as e:
        if '--verbose' in argv:
            raise
        print(f'{prog}: error: {e.strerror if isinstance(e, OSError) else e}', file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if os.environ.get('RANK', '0') == '0':  # under torchrun, one line for the run, not one per process
            print(f'{prog}: {e}', file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    return 0
