"""Run one of timm's own scripts with this package's models registered, and timm's ``train.py`` with ``--rspc``.

``python -m timm_rspc.run_script path/to/train.py --rspc --model rvt_tiny ...`` runs a timm checkout's train.py as it
is, with the RSPC flags added to its parser (see its ``--help``) and the RSPC task in place of its classification
task when ``--rspc`` is given (:mod:`timm_rspc.train.timm_script` says how). Any other script (``validate.py``,
``inference.py``, ``benchmark.py``, ...) runs exactly as ``python SCRIPT ARGS`` would, after ``import timm_rspc``.
"""
import os
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0 if argv else 2
    script = argv[0]
    if not os.path.isfile(script):
        print(f"timm_rspc.run_script: error: script '{script}' does not exist", file=sys.stderr)
        return 2
    import timm_rspc  # noqa: F401  (registers the models with timm)
    from timm_rspc.train.args import ConfigError
    from timm_rspc.train.timm_script import is_train_script, load_script, run_train_script, script_argv
    script_argv(script, argv[1:])
    try:
        namespace = load_script(script)
        if is_train_script(namespace):
            run_train_script(namespace)
        elif callable(namespace.get('main')):
            namespace['main']()
        else:
            print(f"timm_rspc.run_script: error: '{script}' defines no main() to run", file=sys.stderr)
            return 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ConfigError as e:
        print(f'{os.path.basename(script)}: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
