"""``timm-rspc export``: a model and its weights -> a folder in timm's Hub format (weights, config, model card).

``timm-rspc export DIR --model NAME --checkpoint PATH`` exports one model; ``timm-rspc export DIR --all-released SRC``
exports every released weight found among the downloaded release files in SRC into ``DIR/<arch.tag>/``.
"""
import argparse
import json

from ._errors import reported_errors
from ._model_source import add_model_source_arguments, check_model_source, model_source_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('output', metavar='DIR', help='export folder (one subfolder per tag with --all-released)')
    add_model_source_arguments(parser)
    parser.add_argument('--repo-id', metavar='ORG/NAME',
                        help="Hub repository the folder is meant for: the card's code loads hf-hub:ORG/NAME "
                             '(default: this folder, local-dir:DIR; `push` refuses to upload that card)')
    released = parser.add_argument_group('Released weights')
    released.add_argument('--all-released', metavar='SRC',
                          help='export every released RSPC / FAN weight whose release file is in SRC')
    released.add_argument('--filter', default='*', metavar='PATTERN',
                          help='with --all-released: only tags matching this wildcard (default: all)')
    released.add_argument('--hub-org', metavar='ORG', help='with --all-released: cards load from ORG/<arch.tag>')
    parser.add_argument('--overwrite', action='store_true', help='replace existing export files')
    parser.add_argument('--json', action='store_true', help='print the manifest / index as JSON instead of text')
    parser.set_defaults(_parser=parser)


def _run_all_released(args: argparse.Namespace) -> int:
    from timm_rspc.hub import export_all_released
    index = export_all_released(args.all_released, args.output, pattern=args.filter, hub_org=args.hub_org,
                                overwrite=args.overwrite)
    if args.json:
        print(json.dumps(index, indent=2))
    else:
        for row in index['exported']:
            print(f"exported  {row['name']:<40} {row['folder']}")
        for row in index['skipped']:
            print(f"unchanged {row['name']:<40} {row['folder']} (already exported from {row['source']})")
        for row in index['missing']:
            print(f"MISSING   {row['name']:<40} {row['filename']} not in {args.all_released}; download {row['url']}")
        for row in index['unverified']:
            print(f"UNVERIFIED {row['name']:<39} {row['reason']}")
        print(f"{len(index['exported'])} exported, {len(index['skipped'])} unchanged, {len(index['missing'])} missing,"
              f" {len(index['unverified'])} unverified; index: {args.output}/released_index.json")
    return 1 if index['missing'] or index['unverified'] else 0


def run(args: argparse.Namespace) -> int:
    with reported_errors('export'):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.all_released:
        if args.model or args.checkpoint or args.pretrained:
            args._parser.error('--all-released takes the models from the registry; drop --model/--checkpoint/'
                               '--pretrained')
        return _run_all_released(args)
    check_model_source(args._parser, args)
    from timm_rspc.hub import export_model
    manifest = export_model(args.output, repo_id=args.repo_id, overwrite=args.overwrite, **model_source_kwargs(args))
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    stats = manifest['stats']
    print(f"{manifest['model']}: {manifest['weights']} weights -> {args.output}")
    released = f", released as {manifest['release']}" if manifest['release'] else ''
    print(f"  {stats['params_m']}M parameters, {stats['gmacs']} GMACs at {tuple(stats['input_size'])}, "
          f"{manifest['num_classes']} classes{released}")
    for name, entry in manifest['files'].items():
        print(f"  {name:<18} {entry['size']:>12,d} B  sha256 {entry['sha256']}")
    print(f"  load it with timm.create_model('local-dir:{args.output}', pretrained=True)")
    return 0
