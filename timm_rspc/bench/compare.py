"""Several benchmark results side by side, with deltas to the first (the poster's "+ RSPC (Ours)" rows)."""
import json
from typing import Any, Dict, List, Sequence, Union

from .report import table

__all__ = ['read_results', 'compare']


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


def compare(results: Sequence[Union[str, Dict[str, Any]]]) -> str:
    """Table of the results (paths or dicts returned by `run_benchmark`), deltas to the first one."""
    loaded: List[Dict[str, Any]] = [read_results(r) if isinstance(r, str) else r for r in results]
    names = [r['model'] for r in loaded]
    # The same model twice (e.g. two checkpoints): tell the rows apart by their weights.
    if len(set(names)) < len(names):
        names = [f"{r['model']} [{_weights(r)}]" for r in loaded]
    return table(list(zip(names, [r['summary'] for r in loaded])))


def _weights(results: Dict[str, Any]) -> str:
    source = results.get('settings', {}).get('weights', {})
    if 'checkpoint' in source:
        return source['checkpoint'].rsplit('/', 1)[-1]
    return source.get('pretrained') or 'random init'
