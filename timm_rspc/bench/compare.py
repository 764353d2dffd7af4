"""Several benchmark results side by side, with deltas to the first (the poster's "+ RSPC (Ours)" rows).

Each row is labelled: by the labels given (``--label``), else by the model name, and where names collide by the
weights (the checkpoint file, with as many of its parent folders as it takes to tell the files apart), then by the
run folder; rows are never left indistinguishable.
"""
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from .report import table

__all__ = ['read_results', 'compare', 'default_labels']


def read_results(path: str) -> Dict[str, Any]:
    """A ``results.json`` written by a benchmark run."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get('summary'), dict) or 'model' not in data:
        raise ValueError(f"'{path}' is not a results.json of `timm-rspc bench` (no 'model' / 'summary').")
    return data


def compare(results: Sequence[Union[str, Dict[str, Any]]], labels: Optional[Sequence[str]] = None) -> str:
    """Table of the results (paths or dicts returned by `run_benchmark`), deltas to the first one.

    ``labels``: one row label per result (default: `default_labels`); they must be distinct.
    """
    loaded: List[Dict[str, Any]] = [read_results(r) if isinstance(r, str) else r for r in results]
    if labels:
        labels = [str(label) for label in labels]
        if len(labels) != len(loaded):
            raise ValueError(f'{len(loaded)} results but {len(labels)} --label; give one per result or none.')
        if len(set(labels)) != len(labels):
            raise ValueError(f'the rows need distinct --label values, got {labels}.')
    else:
        labels = default_labels(loaded, [r if isinstance(r, str) else None for r in results])
    return table(list(zip(labels, [r['summary'] for r in loaded])))


def default_labels(results: Sequence[Dict[str, Any]], paths: Optional[Sequence[Optional[str]]] = None) -> List[str]:
    """Distinct row labels: the model name; where names collide, ``name [weights]`` with the checkpoint's shortest
    distinguishing path (``runA/model_best.pth.tar``); where those collide too, the results' run folder is added
    (``(output/bench/a)``), and a number as the last resort (the same results twice)."""
    labels = [str(r['model']) for r in results]
    groups = _collisions(labels)
    if not groups:
        return labels
    for group in groups:
        weights = _distinct_suffixes([_weights(results[i]) for i in group])
        for i, w in zip(group, weights):
            labels[i] = f'{labels[i]} [{w}]'
    paths = list(paths or [None] * len(results))
    for group in _collisions(labels):
        folders = [os.path.dirname(os.path.abspath(paths[i])) if paths[i] else None for i in group]
        if None in folders or len(set(folders)) == 1:  # unknown, or the same results twice: numbered below
            continue
        for i, folder in zip(group, _distinct_suffixes(folders)):
            labels[i] = f'{labels[i]} ({folder})'
    for group in _collisions(labels):
        for n, i in enumerate(group, 1):
            labels[i] = f'{labels[i]} #{n}'
    return labels


def _collisions(labels: Sequence[str]) -> List[List[int]]:
    """Indices of the labels that occur more than once, grouped by label (first occurrence order)."""
    groups: Dict[str, List[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _distinct_suffixes(paths: Sequence[str]) -> List[str]:
    """The fewest trailing path components that tell different ``paths`` apart."""
    parts = [p.replace(os.sep, '/').split('/') for p in paths]
    distinct = len(set(paths))  # the same file twice stays one name
    for n in range(1, max(len(p) for p in parts) + 1):
        suffixes = ['/'.join(p[-n:]) for p in parts]
        if len(set(suffixes)) == distinct:
            return suffixes
    return list(paths)


def _weights(results: Dict[str, Any]) -> str:
    source = results.get('settings', {}).get('weights', {})
    if 'checkpoint' in source:
        return source['checkpoint']
    return source.get('pretrained') or 'random init'
