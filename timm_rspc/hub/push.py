"""An export folder -> a Hugging Face Hub repository, through ``huggingface_hub``'s own upload code.

timm's `push_to_hf_hub` writes its generic card and silently keeps an existing one; uploading an export folder
instead lets the card be ours and the rules explicit:

* the token comes from where ``huggingface_hub`` looks (``HF_TOKEN``, the ``hf auth login`` token file); it is never
  printed or written anywhere;
* an existing ``README.md`` (model card) in the repository is never replaced unless ``overwrite_card=True``, or kept
  untouched with ``keep_card=True``; the check happens before anything is created or uploaded;
* ``dry_run=True`` returns the upload plan (files, sizes, SHA-256, repository, revision, commit message) without any
  network access; sizes and digests are those of the files as they are now, each marked when it differs from the
  export's manifest;
* a card whose usage code loads something else (``local-dir:``, another repository's ``hf-hub:``) is not uploaded:
  export with ``--repo-id`` of the target repository, or pass ``keep_card``.
"""
import os
import re
from typing import Any, Dict, List, Optional

from .export import EXPORT_FILES, MANIFEST_NAME, read_manifest

__all__ = ['CardExistsError', 'HubUnreachableError', 'upload_plan', 'push_folder', 'push_model']

_VERIFIED_FILES = ('model.safetensors', 'config.json')


class CardExistsError(FileExistsError):
    """The Hub repository already has a model card and replacing it was not asked for."""


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split('/')
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"The Hub repository must be given as ORG/NAME (or USER/NAME), got '{repo_id}'.")


def upload_plan(
        folder: str,
        repo_id: str,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        private: bool = False,
        create_pr: bool = False,
        keep_card: bool = False,
) -> Dict[str, Any]:
    """What `push_folder` would upload: the export files of ``folder`` with their sizes and SHA-256."""
    _check_repo_id(repo_id)
    missing = [f for f in EXPORT_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"'{folder}' is not a complete export folder (missing: {', '.join(missing)}); "
                                "create it with `timm-rspc export`.")
    manifest = read_manifest(folder)
    from .convert import sha256_file
    files: List[Dict[str, Any]] = []
    for name in EXPORT_FILES:
        if keep_card and name == 'README.md':
            continue
        path = os.path.join(folder, name)
        entry: Dict[str, Any] = {'path': name, 'size': os.path.getsize(path)}
        if name != MANIFEST_NAME:  # the digest of the file as it is now, the one the upload will carry
            entry['sha256'] = sha256_file(path)
            entry['changed_since_export'] = entry['sha256'] != manifest['files'][name]['sha256']
        files.append(entry)
    if not keep_card:
        _check_card(folder, repo_id)
    return {
        'repo_id': repo_id,
        'revision': revision or 'main',
        'private': private,
        'create_pr': create_pr,
        'commit_message': commit_message or f"Add {manifest.get('release') or manifest.get('model')} weights "
                                            f"(timm-rspc export)",
        'files': files,
    }


def push_folder(
        folder: str,
        repo_id: str,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        private: bool = False,
        create_pr: bool = False,
        overwrite_card: bool = False,
        keep_card: bool = False,
        dry_run: bool = False,
        endpoint: Optional[str] = None,
        token: Optional[str] = None,
) -> Dict[str, Any]:
    """Upload the export ``folder`` to ``repo_id`` in one commit; returns the plan, plus the commit when pushed.

    Args:
        folder: An export folder (`export_model`); its files are checked against the manifest's SHA-256 first.
        repo_id: ``ORG/NAME``; created (``private`` or public) if it does not exist.
        revision: Branch to commit to, created from the default branch if missing (default: the default branch).
        commit_message: Commit summary (default names the model).
        create_pr: Open a pull request (against ``revision``) instead of committing to it.
        overwrite_card: Replace an existing ``README.md`` in the repository.
        keep_card: Leave the repository's ``README.md`` alone (upload weights, config and manifest only).
        dry_run: Only return the plan; nothing is sent.
        endpoint: Hub endpoint (default: ``huggingface_hub``'s, i.e. ``HF_ENDPOINT`` or huggingface.co).
        token: Token override; by default ``huggingface_hub`` finds it (``HF_TOKEN``, ``hf auth login``).
    """
    if overwrite_card and keep_card:
        raise ValueError('Choose one of overwrite_card and keep_card.')
    plan = upload_plan(folder, repo_id, revision=revision, commit_message=commit_message, private=private,
                       create_pr=create_pr, keep_card=keep_card)
    _verify_files(folder, plan)
    if dry_run:
        return {**plan, 'dry_run': True}

    from huggingface_hub import HfApi, get_token
    if token is None and get_token() is None:
        raise PermissionError('No Hugging Face token found. Log in with `hf auth login` or set HF_TOKEN.')
    import timm_rspc
    api = HfApi(endpoint=endpoint, token=token, library_name='timm-rspc', library_version=timm_rspc.__version__)
    try:
        return _push(api, folder, repo_id, plan, revision, private, create_pr, keep_card, overwrite_card)
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise HubUnreachableError(
            f"Could not reach the Hugging Face Hub ({api.endpoint}) to push {repo_id}: {e}. Check the network (or "
            f"HF_ENDPOINT) and run the command again; nothing was uploaded in the failing step, and the export folder "
            f"is unchanged. --dry-run shows the upload plan offline.") from None


class HubUnreachableError(ConnectionError):
    """The Hub could not be reached (no network, DNS, timeout): a one-line report, not a traceback."""


def _is_network_error(error: BaseException) -> bool:
    """A transport failure of the HTTP backend huggingface_hub uses: ``requests`` (``ConnectionError``, ``Timeout``)
    in 0.x, ``httpx`` / ``httpx2`` (``TransportError``) later; recognised by those class names, as the backend changed
    across huggingface_hub versions."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, (ConnectionError, TimeoutError)) or bool(names & {'TransportError', 'Timeout'})


def _push(api, folder, repo_id, plan, revision, private, create_pr, keep_card, overwrite_card) -> Dict[str, Any]:
    if not keep_card and not overwrite_card and api.file_exists(repo_id, 'README.md', revision=revision):
        raise CardExistsError(
            f"{repo_id} already has a model card (README.md){f' at revision {revision}' if revision else ''}. "
            "Pass --overwrite-card to replace it, or --keep-card to upload the weights and config only.")
    # private=None leaves a new repository's visibility to the owner's default (public unless the org says otherwise).
    api.create_repo(repo_id, private=True if private else None, exist_ok=True)
    if revision not in (None, 'main'):
        api.create_branch(repo_id, branch=revision, exist_ok=True)  # committing to a missing branch would fail
    # One commit holding every file: the repository never has weights without the config and card describing them.
    from huggingface_hub import CommitOperationAdd
    operations = [CommitOperationAdd(path_in_repo=f['path'], path_or_fileobj=os.path.join(folder, f['path']))
                  for f in plan['files']]
    commit = api.create_commit(repo_id, operations=operations, commit_message=plan['commit_message'],
                               revision=revision, create_pr=create_pr)
    return {**plan, 'dry_run': False, 'commit_url': commit.commit_url, 'commit_oid': commit.oid,
            'pr_url': getattr(commit, 'pr_url', None)}


def _verify_files(folder: str, plan: Dict[str, Any]) -> None:
    """Refuse to upload weights or config that changed since the export (SHA-256 no longer matches the manifest).

    The card may be edited by hand before pushing; the weights and the config that rebuilds the model may not.
    """
    changed = [f['path'] for f in plan['files'] if f['path'] in _VERIFIED_FILES and f.get('changed_since_export')]
    if changed:
        raise ValueError(f"{', '.join(changed)} in '{folder}' changed since the export (SHA-256 differs from "
                         f"{MANIFEST_NAME}); re-export the folder.")


def _check_card(folder: str, repo_id: str) -> None:
    """The card's usage code must load this repository: refuse a card written for a folder or another repository."""
    with open(os.path.join(folder, 'README.md'), encoding='utf-8') as f:
        card = f.read()
    sources = set(re.findall(r"create_model\(\s*['\"]((?:local-dir|hf-hub):[^'\"]+)['\"]", card))
    wrong = sorted(s for s in sources if s != f'hf-hub:{repo_id}')
    if wrong:
        raise ValueError(
            f"The model card in '{folder}' loads {wrong[0]!r}, not 'hf-hub:{repo_id}': on the Hub its usage code "
            f"would not load these weights. Export again with --repo-id {repo_id} (--overwrite), or pass --keep-card "
            "to upload the weights and config only.")


def push_model(
        repo_id: str,
        model_name: str,
        checkpoint: Optional[str] = None,
        pretrained: bool = False,
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        results: Optional[str] = None,
        args_yaml: Optional[str] = None,
        license: Optional[str] = None,
        **push_kwargs: Any,
) -> Dict[str, Any]:
    """Export ``model_name`` (see `export_model`) into a temporary folder and push it with `push_folder`."""
    import tempfile
    from .export import export_model
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix='timm_rspc_push_') as tmp:
        folder = os.path.join(tmp, 'export')
        export_model(folder, model_name, checkpoint=checkpoint, pretrained=pretrained, use_ema=use_ema,
                     num_classes=num_classes, model_kwargs=model_kwargs, repo_id=repo_id, results=results,
                     args_yaml=args_yaml, license=license)
        return push_folder(folder, repo_id, **push_kwargs)
