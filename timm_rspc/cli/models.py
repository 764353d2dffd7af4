"""``timm-rspc models``: the models this package registers (or, with ``--all``, any timm model) and their weights."""
import argparse
import json
import sys
from typing import Dict, List, Optional


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('filter', nargs='?', default='*', help='wildcard on model names, e.g. "rvt*" (default: all)')
    parser.add_argument('--pretrained', action='store_true', help='one row per pretrained tag, with its source')
    parser.add_argument('--all', action='store_true',
                        help="every timm model, not only this package's (e.g. --all --pretrained 'vit_small*')")
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')


def _source(cfg) -> Optional[str]:
    """Where a pretrained cfg's weights come from: its Hub repository, else its URL (None without weights)."""
    if cfg is None:
        return None
    return getattr(cfg, 'hf_hub_id', None) or getattr(cfg, 'url', None) or None


def list_package_models(pattern: str = '*', pretrained: bool = False, everything: bool = False) -> List[Dict]:
    """Rows for the models matching ``pattern``: registered by timm_rspc's model files (every timm model with
    ``everything``). Per architecture: ``name``, ``tags`` (its pretrained tags, default first) and the default tag's
    ``url`` / ``hf_hub_id``; with ``pretrained``, one row per ``arch.tag`` with that tag's ``url`` / ``hf_hub_id``."""
    import timm
    import timm_rspc  # noqa: F401
    from timm.models import get_pretrained_cfg
    rows = []
    if pretrained:
        for name in timm.list_models(pattern, pretrained=True):
            if everything or _is_package_model(name):
                cfg = get_pretrained_cfg(name)
                rows.append({'name': name, 'url': getattr(cfg, 'url', None) or None,
                             'hf_hub_id': getattr(cfg, 'hf_hub_id', None) or None})
        return rows
    for name in timm.list_models(pattern):
        if everything or _is_package_model(name):
            tags = [t.split('.', 1)[1] for t in timm.list_models(name, pretrained=True) if '.' in t]
            cfg = get_pretrained_cfg(name) if tags else None
            default = getattr(cfg, 'tag', None)
            tags.sort(key=lambda tag: tag != default)  # the tag `create_model(name, pretrained=True)` loads first
            rows.append({'name': name, 'tags': tags, 'url': getattr(cfg, 'url', None) or None,
                         'hf_hub_id': getattr(cfg, 'hf_hub_id', None) or None})
    return rows


def _is_package_model(name: str) -> bool:
    from timm.models import get_arch_name, is_model, model_entrypoint
    arch = get_arch_name(name)
    return is_model(arch) and model_entrypoint(arch).__module__.startswith('timm_rspc.')


def format_rows(rows: List[Dict], pretrained: bool) -> str:
    """Aligned columns, no trailing spaces: name and source per tag, or name, tags and default source."""
    if pretrained:
        table = [(row['name'], row['hf_hub_id'] or row['url'] or '(no weights)') for row in rows]
        header = ('model.tag', 'weights')
    else:
        table = [(row['name'], ', '.join(row['tags']) or '-') for row in rows]
        header = ('model', 'pretrained tags (default first)')
    width = max(len(header[0]), *(len(name) for name, _ in table))
    return '\n'.join(f'{name:<{width}}  {other}'.rstrip() for name, other in [header, *table])


def run(args: argparse.Namespace) -> int:
    rows = list_package_models(args.filter, pretrained=args.pretrained, everything=args.all)
    if not rows:
        scope = 'no timm model' if args.all else "none of this package's models (RVT, FAN)"
        hint = '' if args.all else '; --all searches every timm model'
        print(f"timm-rspc models: {scope} matches {args.filter!r}{' with pretrained weights' * args.pretrained}"
              f"{hint}.", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows, args.pretrained))
    return 0
