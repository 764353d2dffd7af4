"""The ``timm-rspc`` command line: one sub-command per module, imported only when it runs.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.
A module that must parse its own command line (``train``: a ``-c`` YAML file supplies flag defaults) defines
``main(argv) -> int`` instead, which receives the arguments after the command name.
"""
import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module, one-line help). Add new commands here.
COMMANDS = {
    'models': ('timm_rspc.cli.models', 'List the registered RVT / FAN models and their pretrained tags.'),
    'train': ('timm_rspc.cli.train', "Train a timm model with timm train.py's flags; --rspc adds RSPC."),
    'demo': ('timm_rspc.cli.demo', 'Offline demo: train a small ViT with and without RSPC, compare patch robustness.'),
    'convert': ('timm_rspc.cli.convert', 'Convert a training checkpoint to a validated safetensors state dict.'),
    'export': ('timm_rspc.cli.export', "Export a model to a folder in timm's Hub format, with a model card."),
    'push': ('timm_rspc.cli.push', 'Upload an export (or a model) to the Hugging Face Hub.'),
    'bench': ('timm_rspc.cli.bench', 'Robustness benchmarks: ImageNet-C/-A/-R/-P/-Sketch/-V2, CIFAR-C; --compare.'),
    'corrupt': ('timm_rspc.cli.corrupt', "Write a corrupted copy of an image folder in ImageNet-C's layout."),
    'analyze': ('timm_rspc.cli.analyze', 'Patch sensitivity and attention stability of up to two models.'),
    'info': ('timm_rspc.cli.info', 'Versions, devices, and whether the Triton kernels are active (self-checks).'),
}


def build_parser() -> argparse.ArgumentParser:
    from timm_rspc import __version__
    parser = argparse.ArgumentParser(prog='timm-rspc', description='RSPC for timm models.')
    parser.add_argument('--version', action='version', version=f'timm-rspc {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # Parse the command name first, so that only the chosen command's module (and its dependencies) is imported.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith('-') else argv)
    if not getattr(known, 'command', None):
        parser.print_help()
        return 2
    try:   # importing torch takes seconds: a Ctrl-C then is one line too (each command handles its own run's)
        module = importlib.import_module(known._module)
        if not hasattr(module, 'main'):
            sub_parser = argparse.ArgumentParser(prog=f'timm-rspc {known.command}',
                                                 description=COMMANDS[known.command][1])
            module.add_arguments(sub_parser)
            args = sub_parser.parse_args(argv[1:])
    except KeyboardInterrupt:
        print(f'timm-rspc {known.command}: interrupted while starting; nothing was done.', file=sys.stderr)
        return 130
    if hasattr(module, 'main'):
        return int(module.main(argv[1:]) or 0)
    return int(module.run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
