"""The demo's outputs: terminal tables, ``demo.json`` and (with the ``plot`` extra) ``demo.png``,
``sensitivity.png`` and ``attention.png`` (``attention_grid.png`` is written by the experiment, which has the models).
"""
import json
import os
from typing import Dict, List

from timm_rspc.analysis.plots import (
    PLOT_EXTRA_HINT, attention_stability_figure, require_matplotlib, save_figure, sensitivity_figure,
)
from timm_rspc.analysis.report import DROP_CONVENTION, format_attention_table, format_drop, format_sensitivity_table
from timm_rspc.files import atomic_write_text

__all__ = ['PLOT_EXTRA_HINT', 'format_table', 'format_analyses', 'write_json', 'write_plots']


def format_table(report: Dict) -> str:
    """Accuracy and true-class confidence (percent), clean and with 10% of the patches replaced by noise."""
    occ = report['occlusion']
    patches = f"{occ['patches']}/{occ['of']} patches"
    head = f"{'':<9}| {'clean':^12} | {f'random {patches}':^27} | {f'worst-case {patches}':^27}"
    sub = f"{'model':<9}| {'acc':>5} {'conf':>6} | {'acc (drop)':>13} {'conf (drop)':>13} | " \
          f"{'acc (drop)':>13} {'conf (drop)':>13}"
    lines = [head, sub, '-' * len(sub)]
    def occluded(scores, drop):
        return (f"{scores['accuracy']:5.1f} ({format_drop(drop['accuracy'])}) "
                f"{scores['confidence']:5.1f} ({format_drop(drop['confidence'])})")

    for m in report['models']:
        c, d = m['clean'], m['drop']
        lines.append(
            f"{m['name']:<9}| {c['accuracy']:5.1f} {c['confidence']:6.1f} | "
            f"{occluded(m['random'], d['random'])} | {occluded(m['worst_case'], d['worst_case'])}")
    seeds = report['seeds']
    runtime = report['runtime_seconds']
    lines.append('-' * len(sub))
    lines.append(DROP_CONVENTION)
    lines.append('feature distortion under the worst-case patches (RSPC alignment loss, lower = less sensitive): ' +
                 ', '.join(f"{m['name']} {m['attacker']['align_loss_end']:.3f}" for m in report['models']))
    lines.append(f"seeds: data {seeds['data']}, training {seeds['training']}, evaluation {seeds['evaluation']}; "
                 f"{report['data']['train_images']} train / {report['data']['val_images']} val images; "
                 f"runtime {runtime['total']:.0f} s")
    return '\n'.join(lines)


def write_json(report: Dict, output_dir: str) -> str:
    path = os.path.join(output_dir, 'demo.json')
    atomic_write_text(path, json.dumps(report, indent=2))
    return path


def format_analyses(report: Dict) -> str:
    """The full sensitivity table (every perturbation) and the per-layer attention stability table."""
    return '\n\n'.join([
        'Sensitivity (same fixed random patches for every perturbation and both models):',
        format_sensitivity_table(report['sensitivity']),
        'Attention stability (clean vs uniform noise in the same patches; JS divergence in nats x 1000):',
        format_attention_table(report['attention'])])


def write_plots(report: Dict, output_dir: str) -> List[str]:
    """``demo.png``, ``sensitivity.png`` and ``attention.png``; [] when matplotlib is missing."""
    try:
        plt = require_matplotlib()
    except ImportError:
        return []
    occ = report['occlusion']
    patches = f"{occ['patches']}/{occ['of']} patches"
    conditions = [('clean', 'clean'), ('random', f'random\n{patches}'), ('worst_case', f'worst-case\n{patches}')]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(report['models'])
    for ax, metric, label in zip(axes, ('accuracy', 'confidence'), ('top-1 accuracy (%)', 'true-class confidence (%)')):
        for i, m in enumerate(report['models']):
            values = [m[key][metric] for key, _ in conditions]
            xs = [j + (i - (len(report['models']) - 1) / 2) * width for j in range(len(conditions))]
            bars = ax.bar(xs, values, width, label=m['name'])
            ax.bar_label(bars, fmt='%.1f', fontsize=8)
        ax.set_xticks(range(len(conditions)), [name for _, name in conditions])
        ax.set_ylabel(label)
        ax.set_ylim(0, 105)
        ax.legend(loc='upper right', fontsize=8)
    seeds = report['seeds']
    fig.suptitle(f"Patch-noise occlusion, {report['config']['model']} (small), seeds data {seeds['data']} / "
                 f"train {seeds['training']} / eval {seeds['evaluation']}", fontsize=10)
    fig.tight_layout()
    return [save_figure(fig, os.path.join(output_dir, 'demo.png'), dpi=120),
            save_figure(sensitivity_figure(report['sensitivity']), os.path.join(output_dir, 'sensitivity.png'),
                        dpi=90),
            save_figure(attention_stability_figure(report['attention']), os.path.join(output_dir, 'attention.png'),
                        dpi=90)]
