"""The analyses' outputs: a run folder that is never overwritten, ``analysis.json``, CSV tables and terminal tables."""
import math
import os
from typing import Dict, List

from timm_rspc.files import atomic_write_json, write_csv

from .sensitivity import sensitivity_rows

__all__ = ['create_run_folder', 'write_json', 'write_csv', 'attention_rows', 'format_sensitivity_table',
           'format_attention_table']


def write_json(result: Dict, path: str) -> str:
    atomic_write_json(path, result)
    return path


def create_run_folder(path: str) -> str:
    """Create ``path`` for a new run; refuse a folder that exists and is not empty (nothing is ever overwritten)."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"'{path}' already exists and is not empty; choose a new --output folder.")
    os.makedirs(path, exist_ok=True)
    return path


def attention_rows(result: Dict) -> List[Dict]:
    """One row per model and attention layer, for the CSV."""
    return [dict(model=name, layer_index=i, **layer)
            for name, res in result['models'].items() for i, layer in enumerate(res['layers'])]


def format_sensitivity_table(result: Dict) -> str:
    """Top-1 accuracy and true-class confidence (percent) per perturbation, with the drop from clean."""
    rows = sensitivity_rows(result)
    width = max(len(r['perturbation']) for r in rows) + 1
    model_width = max(len('model'), *(len(r['model']) for r in rows)) + 1
    head = f"{'model':<{model_width}}| {'perturbation':<{width}}| {'acc (drop)':>13} | {'conf (drop)':>13}"
    lines = [f"{result['patches_per_image']}/{result['num_patches']} patches per image, {result['num_images']} images; "
             f"{DROP_CONVENTION}", head, '-' * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<{model_width}}| {r['perturbation']:<{width}}| "
                     f"{r['accuracy']:5.1f} ({format_drop(r['accuracy_drop'])}) | "
                     f"{r['confidence']:5.1f} ({format_drop(r['confidence_drop'])})")
    return '\n'.join(lines)


# One convention for every output (terminal, CSV, JSON, README): a drop is clean minus perturbed, in percentage
# points, so a positive number is a loss; the JSON's and CSV's accuracy_drop / confidence_drop are these numbers.
DROP_CONVENTION = 'drop = clean - perturbed, percentage points'


def format_drop(drop: float) -> str:
    """A drop as the tables print it: one decimal, never ``-0.0``."""
    return f'{round(drop, 1) + 0.:5.1f}'


def _number(value: float, digits: int) -> str:
    return 'n/a' if math.isnan(value) else f'{value:.{digits}f}'


def format_attention_table(result: Dict) -> str:
    """Per model and attention layer: Jensen-Shannon divergence (x1000) and cosine similarity of attention rows,
    over all rows and over the corrupted patches' rows, and the attention mass (percent) on the corrupted patches."""
    model_width = max(len('model'), *(len(name) for name in result['models'])) + 1
    head = (f"{'model':<{model_width}}| layer | {'JS x1e3':>7} {'(corr.)':>7} | {'cosine':>6} {'(corr.)':>7} | "
            f"{'mass on corr. % clean -> corrupted':>34}")
    lines = [head, '-' * len(head)]
    for name, res in result['models'].items():
        for i, s in enumerate(res['layers']):
            js = f"{_number(1e3 * s['js'], 2):>7} {_number(1e3 * s['js_corrupted_rows'], 2):>7}"
            cosine = f"{_number(s['cosine'], 4):>6} {_number(s['cosine_corrupted_rows'], 4):>7}"
            mass = f"{_number(100 * s['attention_to_corrupted_clean'], 1):>24} -> " \
                   f"{_number(100 * s['attention_to_corrupted'], 1):>5}"
            lines.append(f"{name:<{model_width}}| {i:>5} | {js} | {cosine} | {mass}")
    for name, res in result['models'].items():
        # one line per model for the layers not measured, with the reason (Swin's windowed attention, ...)
        reasons: Dict[str, List[str]] = {}
        for layer, reason in res.get('skipped_layers', {}).items():
            reasons.setdefault(reason.split(' (')[0], []).append(layer)
        for reason, layers in reasons.items():
            lines.append(f"{name}: {len(layers)} attention layer{'s' * (len(layers) > 1)} not measured "
                         f"({', '.join(layers)}): {reason}")
    return '\n'.join(lines)
