"""``timm-rspc demo``: train a small ViT with and without RSPC on generated shapes and compare patch robustness.

Offline and deterministic: the data are generated, nothing is downloaded. Writes ``demo.json`` and, with the ``plot``
extra, ``demo.png``, ``sensitivity.png``, ``attention.png`` and ``attention_grid.png`` next to the two training runs
in the output folder.
"""
import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from timm_rspc.method.args import setting_type
    parser.add_argument('--output', default=None, metavar='DIR',
                        help='new folder for this demo run (default: ./output/demo/<date-time>)')
    parser.add_argument('--data-dir', default=None, metavar='DIR',
                        help='where the generated images are cached (default: ./output/demo/data-<size>)')
    parser.add_argument('--quick', action='store_true', help='a tiny version that runs in well under a minute')
    parser.add_argument('--epochs', type=int, default=None, help='training epochs of both models')
    parser.add_argument('--seed', type=int, default=None, help='training seed of both models (default: 42)')
    parser.add_argument('--rspc-lambda', type=setting_type('align_weight'), default=None,
                        help='weight of the RSPC alignment loss, >= 0')


def run(args: argparse.Namespace) -> int:
    from timm.utils import setup_default_logging
    from timm_rspc.cli._errors import reported_errors
    from timm_rspc.demo.experiment import default_output_dir, namespace_to_config, run_demo
    from timm_rspc.demo.report import PLOT_EXTRA_HINT, format_analyses, format_table, write_json, write_plots
    from timm_rspc.train import INTERRUPTED_EXIT_STATUS
    setup_default_logging()
    config = namespace_to_config(args)
    output_dir = args.output or default_output_dir()
    if os.path.exists(output_dir) and os.listdir(output_dir):
        print(f"timm-rspc demo: error: '{output_dir}' is not empty; choose a new --output folder.", file=sys.stderr)
        return 2
    os.makedirs(output_dir, exist_ok=True)
    data_dir = args.data_dir or os.path.join(
        'output', 'demo', f'data-{"quick" if args.quick else "full"}-{config.img_size}px')
    try:
        with reported_errors('demo'):
            report = run_demo(config, output_dir, data_dir)
    except KeyboardInterrupt:  # the trainer's TrainingInterrupted included: the demo stops as a whole
        print(f"timm-rspc demo: interrupted: stopped before the report; '{output_dir}' holds only what was finished "
              "(the demo does not resume: run it again with a new --output).", file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    print()
    print(format_table(report))
    print()
    print(format_analyses(report))
    print(f'\nwritten: {write_json(report, output_dir)}')
    plots = write_plots(report, output_dir) + list(report['figures'].values())
    print('\n'.join(f'written: {plot}' for plot in plots) if plots else f'no plots: {PLOT_EXTRA_HINT}')
    return 0
