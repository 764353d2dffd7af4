"""Per-split records of a run -> the figures the literature reports, per data set, plus the paper's table row.

A record is what one finished split wrote to the run folder: ``{'correct', 'total'}`` for image splits,
``{'flip_probability', 'top5_distance', 'videos'}`` for an ImageNet-P perturbation. The summary only reads records,
so a resumed run and an uninterrupted one give the same numbers.
"""
from typing import Any, Dict, List, Optional

from .corruption_metrics import cifar_c_summary, imagenet_c_summary, relative_corruption_errors
from .reference import (
    ALEXNET_IMAGENET_C_ERROR, CIFAR_C_CORRUPTIONS, IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA, IMAGENET_C_SEVERITIES,
    IMAGENET_P_PERTURBATIONS,
)

__all__ = ['summarise', 'paper_results']

Records = Dict[str, Dict[str, Any]]  # split key ('imagenet_c/fog/3') -> record


def _accuracy(record: Dict[str, Any]) -> float:
    return record['correct'] / record['total']


def _per_severity(records: Records, dataset: str, names, accuracy: bool) -> Dict[str, List[float]]:
    """{name: [value at severity 1..5]} for every name whose 5 severities all have records."""
    table = {}
    for name in names:
        keys = [f'{dataset}/{name}/{s}' for s in IMAGENET_C_SEVERITIES]
        if all(k in records for k in keys):
            values = [_accuracy(records[k]) for k in keys]
            table[name] = values if accuracy else [1 - v for v in values]
    return table


def _imagenet_c_partial(records: Records, extra: Dict[str, List[float]], transform: str) -> Dict[str, Any]:
    """What an incomplete ImageNet-C gives: errors per corruption and severity for what exists, never an mCE."""
    per_severity: Dict[str, List[Optional[float]]] = {}
    for name in IMAGENET_C_CORRUPTIONS:
        keys = [f'imagenet_c/{name}/{s}' for s in IMAGENET_C_SEVERITIES]
        if any(k in records for k in keys):
            per_severity[name] = [100 * (1 - _accuracy(records[k])) if k in records else None for k in keys]
    missing_splits = [f'{name}/{s}' for name in IMAGENET_C_CORRUPTIONS for s in IMAGENET_C_SEVERITIES
                      if f'imagenet_c/{name}/{s}' not in records]
    missing = [name for name in IMAGENET_C_CORRUPTIONS if any(m.startswith(name + '/') for m in missing_splits)]
    error = {n: sum(v for v in row if v is not None) / sum(v is not None for v in row)
             for n, row in per_severity.items()}
    complete = [n for n, row in per_severity.items() if None not in row]
    summary: Dict[str, Any] = {
        'partial': True,
        'note': f'{75 - len(missing_splits)} of the 75 corruption x severity splits evaluated: this is not an mCE',
        'transform': transform,
        'error': error,  # mean over the severities evaluated
        'error_per_severity': per_severity,  # None where a severity is missing
        'ce': {n: 100 * (sum(per_severity[n]) / 500) / ALEXNET_IMAGENET_C_ERROR[n] for n in complete},
        'missing': missing,  # corruptions with at least one severity missing
        'missing_splits': missing_splits,
    }
    if extra:
        summary['extra_error'] = {n: 100 * sum(v) / len(v) for n, v in sorted(extra.items())}
    return summary


def _imagenet_c(records: Records, clean_error: Optional[float], transform: str) -> Dict[str, Any]:
    errors = _per_severity(records, 'imagenet_c', IMAGENET_C_CORRUPTIONS, accuracy=False)
    extra = _per_severity(records, 'imagenet_c', IMAGENET_C_EXTRA, accuracy=False)
    if len(errors) < len(IMAGENET_C_CORRUPTIONS):
        return _imagenet_c_partial(records, extra, transform)
    summary = imagenet_c_summary(errors, clean_error=clean_error, extra_errors=extra or None)
    summary['transform'] = transform
    return summary


def _imagenet_p(records: Records, reference: Optional[Dict[str, Dict[str, float]]]) -> Dict[str, Any]:
    done = [p for p in IMAGENET_P_PERTURBATIONS if f'imagenet_p/{p}' in records]
    fp = {p: 100 * records[f'imagenet_p/{p}']['flip_probability'] for p in done}
    t5d = {p: records[f'imagenet_p/{p}']['top5_distance'] for p in done}
    complete = len(done) == len(IMAGENET_P_PERTURBATIONS)
    summary: Dict[str, Any] = {
        'flip_probability': fp, 'top5_distance': t5d, 'complete': complete,
        'mean_flip_probability': sum(fp.values()) / len(fp) if complete else None,
        'mean_top5_distance': sum(t5d.values()) / len(t5d) if complete else None,
        'normalised': False,
        'note': 'flip probabilities (percent) and top-5 distances, not normalised by AlexNet',
    }
    if reference is not None and complete:
        fr = {p: fp[p] / reference['flip_probability'][p] for p in done}  # FP in percent over AlexNet's fraction
        t5 = {p: 100 * t5d[p] / reference['top5_distance'][p] for p in done}
        summary.update(normalised=True, flip_rate=fr, top5_distance_rate=t5, mfr=sum(fr.values()) / len(fr),
                       mt5d=sum(t5.values()) / len(t5), note='FR and T5D normalised by the reference file given')
    return summary


NO_REFERENCE_NOTE = ("no CE / mCE: AlexNet's normalisers exist only for ImageNet-C's own images; name a reference "
                     "model (--reference-model NAME, evaluated on the same corrupted images) or an earlier run's "
                     "results (--reference-results PATH) for CE relative to it")


def _corrupt(records: Records, plan: Dict[str, Any]) -> Dict[str, Any]:
    """An image folder corrupted on the fly (``plan``: settings.json's ``corrupt``): top-1 error per corruption and
    severity, the reference's, and CE / mCE relative to the reference (mean over the corruptions outside the
    registry's extra ones, as ImageNet-C's mCE; over all when only extra ones were chosen)."""
    names, severities = plan['corruptions'], plan['severities']
    reference = plan.get('reference')

    def errors(correct_of) -> Dict[str, List[float]]:
        return {n: [1 - correct_of(n, s) / records[f'corrupt/{n}/{s}']['total'] for s in severities] for n in names}
    own = errors(lambda n, s: records[f'corrupt/{n}/{s}']['correct'])

    def percent(table) -> Dict[str, Any]:
        return {'error': {n: 100 * sum(v) / len(v) for n, v in table.items()},
                'error_per_severity': {n: [100 * v[severities.index(s)] if s in severities else None
                                           for s in IMAGENET_C_SEVERITIES] for n, v in table.items()}}
    mean_over = [n for n in names if n not in plan['extra']] or list(names)
    summary: Dict[str, Any] = {
        'folder': plan['folder'], 'images': plan['images'], 'labels': plan['labels'], 'seed': plan['seed'],
        'constants': plan.get('constants', 'imagenet'),
        'corruptions': list(names), 'severities': list(severities), 'mean_over': mean_over,
        'transform': plan['transform'], 'not_available': plan['not_available'], **percent(own),
    }
    summary['mean_error'] = sum(summary['error'][n] for n in mean_over) / len(mean_over)
    if reference is None:
        summary['note'] = NO_REFERENCE_NOTE
        return summary
    if reference['kind'] == 'model':
        theirs = errors(lambda n, s: records[f'corrupt/{n}/{s}']['reference_correct'])
    else:
        splits = reference['splits']
        theirs = {n: [1 - splits[f'{n}/{s}']['correct'] / splits[f'{n}/{s}']['total'] for s in severities]
                  for n in names}
    relative = relative_corruption_errors({n: own[n] for n in mean_over}, {n: theirs[n] for n in mean_over},
                                          noise=plan['noise'])
    ce = dict(relative['ce'])
    others = [n for n in names if n not in mean_over]
    if others:
        ce.update(relative_corruption_errors({n: own[n] for n in others}, {n: theirs[n] for n in others})['ce'])
    summary['reference'] = {'model': reference['model'], 'from': reference['kind'], **percent(theirs)}
    summary['ce'] = {n: ce[n] for n in names}
    for key in ('mce', 'mce_no_noise'):
        if key in relative:
            summary[key] = relative[key]
    where = 'evaluated in this run on the same corrupted images' if reference['kind'] == 'model' else \
        f"from the results file {reference['path']}"
    summary['note'] = f"CE relative to {reference['model']} ({where}), not to AlexNet"
    if relative['undefined_ce']:
        summary['note'] += (f"; no mCE: {reference['model']} makes no error on "
                            f"{', '.join(relative['undefined_ce'])} (CE undefined: division by zero)")
    return summary


def summarise(records: Records, imagenet_c_transform: str = 'authors',
              imagenet_p_reference: Optional[Dict[str, Dict[str, float]]] = None,
              corrupt: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every data set with records -> its summary (percent); ``corrupt``: settings.json's ``corrupt`` (the
    corruption plan and the reference) for an on-the-fly corrupted folder."""
    datasets = sorted({key.split('/', 1)[0] for key in records})
    summary: Dict[str, Any] = {}
    clean_error = 1 - _accuracy(records['imagenet/all']) if 'imagenet/all' in records else None
    for dataset in datasets:
        if dataset == 'imagenet_c':
            summary[dataset] = _imagenet_c(records, clean_error, imagenet_c_transform)
        elif dataset == 'imagenet_p':
            summary[dataset] = _imagenet_p(records, imagenet_p_reference)
        elif dataset == 'corrupt':
            summary[dataset] = _corrupt(records, corrupt)
        elif dataset in ('cifar10_c', 'cifar100_c'):
            accuracies = _per_severity(records, dataset, CIFAR_C_CORRUPTIONS, accuracy=True)
            summary[dataset] = cifar_c_summary(accuracies)
            summary[dataset]['complete'] = len(accuracies) == len(CIFAR_C_CORRUPTIONS)
        else:
            record = records[f'{dataset}/all']
            summary[dataset] = {'top1': 100 * _accuracy(record), 'images': record['total']}
    return summary


def paper_results(summary: Dict[str, Any]) -> Dict[str, float]:
    """The measured figures under the metric names of ``timm_rspc.models.paper_results.METRICS`` (model cards).

    Only complete figures qualify: a partial ImageNet-C is not an mCE and unnormalised flip probabilities are not
    an mFR, so they stay out.
    """
    out: Dict[str, float] = {}
    if 'imagenet' in summary:
        out['imagenet_top1'] = summary['imagenet']['top1']
    if 'imagenet_a' in summary:
        out['imagenet_a_top1'] = summary['imagenet_a']['top1']
    c = summary.get('imagenet_c', {})
    if 'mce' in c:
        out['imagenet_c_mce'] = c['mce']
        out['imagenet_c_mce_no_noise'] = c['mce_no_noise']
    if summary.get('imagenet_p', {}).get('normalised'):
        out['imagenet_p_mfr'] = summary['imagenet_p']['mfr']
    for n in ('10', '100'):
        if summary.get(f'cifar{n}_c', {}).get('complete'):
            out[f'cifar{n}_c_top1'] = summary[f'cifar{n}_c']['top1']
    return out
