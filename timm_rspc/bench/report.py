"""How a run is shown: the paper's table row(s) on the terminal, results.csv, and the error plot."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_rspc.files import atomic_write, write_csv

__all__ = ['COLUMNS', 'table', 'write_summary_csv', 'write_plot', 'missing_imagenet_c']

# (label, dataset, key in its summary, higher is better): the poster's columns first, then the other benchmarks.
COLUMNS: Tuple[Tuple[str, str, str, bool], ...] = (
    ('IN-1k top-1', 'imagenet', 'top1', True),
    ('IN-A top-1', 'imagenet_a', 'top1', True),
    ('IN-C mCE', 'imagenet_c', 'mce', False),
    ('IN-C mCE w/o noise', 'imagenet_c', 'mce_no_noise', False),
    ('IN-P mFR', 'imagenet_p', 'mfr', False),
    ('IN-C rel. mCE', 'imagenet_c', 'relative_mce', False),
    ('IN-P mean FP (unnorm.)', 'imagenet_p', 'mean_flip_probability', False),
    ('IN-P mean T5D (unnorm.)', 'imagenet_p', 'mean_top5_distance', False),
    ('IN-R top-1', 'imagenet_r', 'top1', True),
    ('IN-Sketch top-1', 'imagenet_sketch', 'top1', True),
    ('IN-V2 top-1', 'imagenet_v2', 'top1', True),
    ('C10-C top-1', 'cifar10_c', 'top1', True),
    ('C100-C top-1', 'cifar100_c', 'top1', True),
    ('corrupted mCE vs ref.', 'corrupt', 'mce', False),
    ('corrupted mean error', 'corrupt', 'mean_error', False),
)


def _value(summary: Dict[str, Any], dataset: str, key: str) -> Optional[float]:
    value = summary.get(dataset, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def table(runs: Sequence[Tuple[str, Dict[str, Any]]]) -> str:
    """One row per run (name, summary), one column per figure any run has; deltas to the first run in brackets."""
    columns = [c for c in COLUMNS if any(_value(s, c[1], c[2]) is not None for _, s in runs)]
    header = ['model'] + [c[0] + (' (up)' if c[3] else ' (down)') for c in columns]
    rows: List[List[str]] = []
    for i, (name, summary) in enumerate(runs):
        row = [name]
        for _, dataset, key, _ in columns:
            value, first = _value(summary, dataset, key), _value(runs[0][1], dataset, key)
            cell = '-' if value is None else f'{value:.2f}'
            if i > 0 and value is not None and first is not None:
                cell += f' ({value - first:+.2f})'
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[j]) for r in [header] + rows) for j in range(len(header))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    notes = []
    for name, summary in runs:
        c, p = summary.get('imagenet_c', {}), summary.get('imagenet_p', {})
        if c.get('partial'):
            notes.append(f'{name}: ImageNet-C is PARTIAL (missing {missing_imagenet_c(c)}): no mCE; its errors per '
                         'corruption are below.')
        elif c:
            notes.append(f'{name}: ImageNet-C preprocessing: {c["transform"]}.')
        if p and not p.get('normalised'):
            notes.append(f'{name}: ImageNet-P not normalised by AlexNet (give --imagenet-p-reference for mFR).')
        corrupted = summary.get('corrupt')
        if corrupted:
            notes.append(f"{name}: '{corrupted['folder']}' corrupted on the fly ({corrupted['images']} images, "
                         f"severities {','.join(str(v) for v in corrupted['severities'])}, seed "
                         f"{corrupted['seed']}): {corrupted['note']}.")
            if corrupted.get('not_available'):
                notes.append(f"{name}: not evaluated (not yet in timm_rspc.corruptions): "
                             f"{', '.join(corrupted['not_available'])}.")
    if not columns:  # e.g. only a partial ImageNet-C: its own table below
        lines = []
    return '\n'.join(lines + notes + _partial_imagenet_c_table(runs) + _corrupt_table(runs))


def _grid(header: List[str], rows: List[List[str]]) -> List[str]:
    widths = [max(len(r[j]) for r in [header] + rows) for j in range(len(header))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return lines


def _corrupt_table(runs: Sequence[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """Runs of an on-the-fly corrupted folder: one row per corruption, top-1 error (%) (mean over the severities
    evaluated), the reference's, and the CE relative to it; '+' marks corruptions outside the mCE (extra ones)."""
    lines: List[str] = []
    for name, summary in runs:
        c = summary.get('corrupt')
        if not c:
            continue
        reference = c.get('reference')
        header = ['corruption', f'{name} error']
        if reference:
            header += [f"{reference['model']} (reference) error", 'CE']
        rows = []
        for n in c['corruptions']:
            row = [n + ('' if n in c['mean_over'] else ' +'), f"{c['error'][n]:.2f}"]
            if reference:
                row += [f"{reference['error'][n]:.2f}", '-' if c['ce'][n] is None else f"{c['ce'][n]:.2f}"]
            rows.append(row)
        outside = '' if len(c['mean_over']) == len(c['corruptions']) else \
            '; + = extra corruption, outside the mean error and the mCE (as in ImageNet-C)'
        lines += ['', f"{name}: '{c['folder']}' corrupted on the fly: top-1 error (%) per corruption, mean over "
                      f"severities {','.join(str(v) for v in c['severities'])}{outside}"]
        lines += _grid(header, rows)
    return lines


def missing_imagenet_c(summary: Dict[str, Any]) -> str:
    """'snow, fog/3': corruptions missing at every severity by name, the others as corruption/severity."""
    missing = summary.get('missing_splits', [])
    whole = [c for c in summary.get('missing', []) if all(f'{c}/{s}' in missing for s in range(1, 6))]
    return ', '.join(whole + [m for m in missing if m.split('/')[0] not in whole])


def _partial_imagenet_c_table(runs: Sequence[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """Runs with a partial ImageNet-C: top-1 error (%) per corruption evaluated, '*' where severities are missing."""
    partial = [(name, s['imagenet_c']) for name, s in runs if s.get('imagenet_c', {}).get('partial')]
    if not partial:
        return []
    from .reference import IMAGENET_C_CORRUPTIONS
    names = [n for n in IMAGENET_C_CORRUPTIONS if any(n in c['error'] for _, c in partial)]
    header = ['model'] + names
    rows = [[name] + [('-' if n not in c['error'] else f"{c['error'][n]:.2f}" + ('*' if n in c['missing'] else ''))
                      for n in names] for name, c in partial]
    widths = [max(len(r[j]) for r in [header] + rows) for j in range(len(header))]
    lines = ['', 'ImageNet-C PARTIAL: top-1 error (%) per corruption (mean over the severities evaluated; '
                 '* = some severities missing; no mCE)']
    lines += ['  '.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(3, '  '.join('-' * w for w in widths))
    missing = sorted({m for _, c in partial for m in IMAGENET_C_CORRUPTIONS if m not in c['error']})
    if missing:
        lines.append(f'not evaluated at any severity: {", ".join(missing)}')
    return lines


def _rows(summary: Dict[str, Any], prefix: str = ''):
    """Flatten nested summaries into (dotted name, value) rows."""
    for key, value in summary.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            yield from _rows(value, name + '.')
        elif isinstance(value, list) and all(v is None or isinstance(v, (int, float)) for v in value):
            for i, v in enumerate(value, 1):
                if v is not None:  # a severity a partial run did not evaluate
                    yield f'{name}.{i}', v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


def write_summary_csv(path: str, summary: Dict[str, Any]) -> None:
    """``dataset,metric,value`` rows: every figure of the summary (per-severity lists as .1 ... .5)."""
    write_csv(path, [dict(dataset=dataset, metric=name, value=repr(value))
                     for dataset, values in summary.items() for name, value in _rows(values)])


def write_plot(path: str, summary: Dict[str, Any], title: str) -> bool:
    """Error per corruption (bars, ImageNet-C and CIFAR-C) and per severity (lines); False if nothing to plot.

    A partial ImageNet-C keeps every corruption on the axis: one not evaluated is marked 'not evaluated' (red
    label), one with missing severities is hatched and starred, and the panel's title names the missing splits.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from .reference import IMAGENET_C_CORRUPTIONS
    panels = []
    corrupted = summary.get('corrupt')
    for dataset, key, label in (('imagenet_c', 'error_per_severity', 'ImageNet-C top-1 error (%)'),
                                ('cifar10_c', 'top1_per_corruption_severity', 'CIFAR-10-C top-1 error (%)'),
                                ('cifar100_c', 'top1_per_corruption_severity', 'CIFAR-100-C top-1 error (%)')):
        table_ = summary.get(dataset, {}).get(key)
        partial = dataset == 'imagenet_c' and summary.get(dataset, {}).get('partial')
        if table_ or partial:
            errors = {n: [100 - v for v in row] if dataset != 'imagenet_c' else row
                      for n, row in (table_ or {}).items()}
            if partial:  # every corruption, in the published order; None where not evaluated
                errors = {n: errors.get(n, [None] * 5) for n in IMAGENET_C_CORRUPTIONS}
                label = 'ImageNet-C top-1 error (%)\nPARTIAL, no mCE'
                title = f'{title}: ImageNet-C PARTIAL (no mCE), missing {missing_imagenet_c(summary[dataset])}'
            panels.append((label, errors, list(range(1, 6))))
    if corrupted:  # only the severities evaluated
        severities = corrupted['severities']
        panels.append(('top-1 error (%), corrupted on the fly',
                       {n: [row[s - 1] for s in severities] for n, row in corrupted['error_per_severity'].items()},
                       severities))
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 2, figsize=(14, 4.5 * len(panels)), squeeze=False,
                             gridspec_kw={'width_ratios': [3, 1]})
    for (label, errors, severities), (bar_ax, line_ax) in zip(panels, axes):
        names = list(errors)
        means = [_mean([v for v in row if v is not None]) for row in errors.values()]
        incomplete = [None in row and any(v is not None for v in row) for row in errors.values()]
        bars = bar_ax.bar(range(len(names)), [0 if m is None else m for m in means],
                          hatch=None, color=['tab:orange' if i else 'tab:blue' for i in incomplete])
        top = max([m for m in means if m is not None] or [1])
        for i, (bar, m) in enumerate(zip(bars, means)):
            if m is None:
                bar_ax.text(i, top * 0.02, 'not evaluated', rotation=90, ha='center', va='bottom', color='tab:red')
            elif incomplete[i]:
                bar.set_hatch('//')
                bar_ax.text(i, m, '*', ha='center', va='bottom', color='tab:orange', fontsize=14)
        bar_ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
        for tick, m in zip(bar_ax.get_xticklabels(), means):
            if m is None:
                tick.set_color('tab:red')
        bar_ax.set_ylabel(label)
        if any(incomplete) or any(m is None for m in means):
            bar_ax.set_title('orange / * = some severities missing (mean of those evaluated); red = not evaluated',
                             fontsize=9)
        per_severity = [_mean([row[i] for row in errors.values() if row[i] is not None])
                        for i in range(len(severities))]
        line_ax.plot([s for s, v in zip(severities, per_severity) if v is not None],
                     [v for v in per_severity if v is not None], 'o-')
        line_ax.set_xlabel('severity')
        line_ax.set_ylabel('mean ' + label.split('\n')[0])
        line_ax.set_xticks(list(severities))
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=100))
    plt.close(fig)
    return True


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None
