"""Run one of timm's own scripts (``validate.py``, ``inference.py``, ``benchmark.py``, ...) with this package's models
registered: ``python -m timm_rspc.run_script path/to/validate.py --model rvt_tiny ...``.

timm's ``train.py`` does not need this (``--device-modules timm_rspc`` imports the package), but its other scripts
have no such flag; this imports ``timm_rspc`` and then runs the script exactly as ``python SCRIPT ARGS`` would.
"""
import os
import runpy
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
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
