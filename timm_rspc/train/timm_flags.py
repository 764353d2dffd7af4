"""Record the command-line flags of a timm ``train.py`` as JSON, to check ``timm-rspc train`` against them.

``python -m timm_rspc.train.timm_flags path/to/train.py --source "timm main 1.0.29.dev0 (aa4b5850)" > flags.json``

Each flag: its option strings, destination, default, action kind, ``nargs``, value type and choices, read from the
script's own argument parser (its module body runs; its ``main()`` does not). ``tests/data/timm_train_py_flags.json``
was written this way; ``tests/test_train_flags.py`` compares this package's trainer with it.
"""
import argparse
import json
import sys
from typing import Any, Dict, List


def describe_flags(parser: argparse.ArgumentParser) -> List[Dict[str, Any]]:
    """The flags of ``parser`` (help excluded) as JSON-ready records."""
    records = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        records.append({
            'option_strings': list(action.option_strings),
            'dest': action.dest,
            'default': list(action.default) if isinstance(action.default, tuple) else action.default,
            'action': type(action).__name__,
            'nargs': action.nargs,
            'type': getattr(action.type, '__name__', None) if action.type is not None else None,
            'choices': list(action.choices) if action.choices is not None else None,
        })
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_rspc.train.timm_flags', description=__doc__.split('\n')[0])
    parser.add_argument('script', help="path of timm's train.py")
    parser.add_argument('--source', required=True, help='which timm version / commit the script is from')
    args = parser.parse_args(argv)
    from .timm_script import load_script
    saved_argv = sys.argv
    sys.argv = [args.script]
    try:
        namespace = load_script(args.script)
    finally:
        sys.argv = saved_argv
    record = {'source': args.source, 'flags': describe_flags(namespace['parser'])}
    json.dump(record, sys.stdout, indent=1)
    sys.stdout.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
