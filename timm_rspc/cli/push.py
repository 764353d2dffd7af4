"""``timm-rspc push ORG/NAME``: upload an export folder, or export a model and upload it, to the Hugging Face Hub.

The token is taken from where huggingface_hub looks (HF_TOKEN, `hf auth login`) and never printed. An existing model
card is never replaced unless --overwrite-card. --dry-run shows the upload plan without any network access: sizes and
SHA-256 of the files as they are now.
"""
import argparse
import json
import os

from ._errors import reported_errors
from ._model_source import add_model_source_arguments, check_model_source, model_source_kwargs

PUSH_LOG = 'timm_rspc_push.json'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('repo_id', metavar='ORG/NAME', help='Hub repository (created if missing)')
    parser.add_argument('--folder', metavar='DIR', help='push this export folder (from `timm-rspc export`)')
    add_model_source_arguments(parser)
    hub = parser.add_argument_group('Hub')
    hub.add_argument('--private', action='store_true', help='create the repository as private')
    hub.add_argument('--revision', metavar='BRANCH', help='branch to commit to (default: main)')
    hub.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    hub.add_argument('--commit-message', metavar='TEXT', help='commit summary (default names the model)')
    card = hub.add_mutually_exclusive_group()
    card.add_argument('--overwrite-card', action='store_true', help="replace the repository's existing README.md")
    card.add_argument('--keep-card', action='store_true', help="leave the repository's README.md untouched")
    hub.add_argument('--dry-run', action='store_true', help='show what would be uploaded; send nothing')
    parser.add_argument('--json', action='store_true', help='print the plan / result as JSON instead of text')
    parser.set_defaults(_parser=parser)


def _append_log(folder: str, record: dict) -> str:
    """Append the push to the folder's push log (a JSON list), keeping earlier pushes."""
    path = os.path.join(folder, PUSH_LOG)
    log = []
    if os.path.isfile(path):
        with open(path) as f:
            log = json.load(f)
    log.append(record)
    with open(path, 'w') as f:
        json.dump(log, f, indent=2)
        f.write('\n')
    return path


def run(args: argparse.Namespace) -> int:
    with reported_errors('push'):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from timm_rspc.hub import push_folder, push_model
    push_kwargs = dict(revision=args.revision, commit_message=args.commit_message, private=args.private,
                       create_pr=args.create_pr, overwrite_card=args.overwrite_card, keep_card=args.keep_card,
                       dry_run=args.dry_run)
    if args.folder:
        if args.model or args.checkpoint or args.pretrained:
            args._parser.error('--folder pushes an existing export; drop --model/--checkpoint/--pretrained')
        result = push_folder(args.folder, args.repo_id, **push_kwargs)
        if not args.dry_run:
            _append_log(args.folder, result)
    else:
        check_model_source(args._parser, args)
        result = push_model(args.repo_id, **model_source_kwargs(args), **push_kwargs)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    where = f"{result['repo_id']}@{result['revision']}" + (' (pull request)' if result['create_pr'] else '')
    print(f"{'Would upload' if result['dry_run'] else 'Uploaded'} to {where}: {result['commit_message']!r}")
    for entry in result['files']:
        digest = f"  sha256 {entry['sha256']}" if 'sha256' in entry else ''
        edited = '  (edited since the export)' if entry.get('changed_since_export') else ''
        print(f"  {entry['path']:<24} {entry['size']:>12,d} B{digest}{edited}")
    if not result['dry_run']:
        print(f"  commit {result['commit_url']}")
        if result.get('pr_url'):
            print(f"  pull request {result['pr_url']}")
    return 0
