"""``timm-rspc models``: the registered models of this package and their pretrained tags."""
import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('filter', nargs='?', default='*', help='wildcard on model names, e.g. "rvt*" (default: all)')
    parser.add_argument('--pretrained', action='store_true', help='only models with pretrained tags, one row per tag')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')


def list_package_models(pattern: str = '*', pretrained: bool = False) -> list:
    """Model names (or ``arch.tag`` names with ``pretrained``) registered by timm_rspc's model files."""
    import timm
    import timm_rspc  # noqa: F401
    from timm.models import get_pretrained_cfg
    names = [n for n in timm.list_models(pattern, pretrained=pretrained) if _is_package_model(n)]
    rows = []
    for name in names:
        cfg = get_pretrained_cfg(name) if pretrained else None
        rows.append({
            'name': name,
            'url': getattr(cfg, 'url', None) if cfg else None,
            'hf_hub_id': getattr(cfg, 'hf_hub_id', None) if cfg else None,
        })
    return rows


def _is_package_model(name: str) -> bool:
    from timm.models import get_arch_name, is_model, model_entrypoint
    arch = get_arch_name(name)
    return is_model(arch) and model_entrypoint(arch).__module__.startswith('timm_rspc.')


def run(args: argparse.Namespace) -> int:
    rows = list_package_models(args.filter, pretrained=args.pretrained)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        source = row['hf_hub_id'] or row['url'] or ''
        print(f"{row['name']:<40} {source}")
    return 0
