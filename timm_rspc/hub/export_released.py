"""Every released weight found in a folder of downloads -> one export folder per tag, ready for ``timm-rspc push``.

The export side of `released` (which only queries the registry), built on `export.export_model`.
"""
import os
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from timm_rspc.files import atomic_write_json, sha256_file

from .export import MANIFEST_NAME, UnverifiedReleaseError, export_model, read_manifest
from .released import ReleasedWeight, find_release_file, released_weights

__all__ = ['export_all_released']


def export_all_released(
        source_dir: str,
        output_dir: str,
        pattern: str = '*',
        hub_org: Optional[str] = None,
        overwrite: bool = False,
        weights: Optional[List[ReleasedWeight]] = None,
) -> Dict[str, Any]:
    """Export every released weight found in ``source_dir`` into ``output_dir/<arch.tag>/``.

    Files that are not there are listed under ``missing`` with the URL to download them from, files whose SHA-256
    does not confirm them as the release file under ``unverified`` (with the reason); the others are exported
    (non-EMA weights, strictly validated, with a model card). Tags already exported from the same source file (same
    SHA-256) are skipped, so the command can be re-run as downloads complete; other existing export files
    are never replaced unless ``overwrite``. ``output_dir/released_index.json`` records the outcome of the last run.
    ``weights`` defaults to the registry's `released_weights` (``pattern`` filters it).
    """
    if not os.path.isdir(source_dir):
        raise NotADirectoryError(f"No folder of downloaded release files at '{source_dir}'.")
    weights = released_weights(pattern) if weights is None else weights
    if not weights:
        raise ValueError(f"No released weights are registered for '{pattern}'; list them with "
                         "`timm-rspc models --pretrained`.")
    exported, skipped, missing, unverified = [], [], [], []
    for weight in weights:
        path = find_release_file(source_dir, weight)
        if path is None:
            missing.append({**asdict(weight), 'filename': weight.filename})
            continue
        folder = os.path.join(output_dir, weight.name)
        if not overwrite and _already_exported(folder, path):
            skipped.append({'name': weight.name, 'folder': folder, 'source': weight.filename})
            continue
        repo_id = f'{hub_org}/{weight.name}' if hub_org else None
        try:
            manifest = export_model(folder, weight.name, checkpoint=path, repo_id=repo_id, overwrite=overwrite)
        except UnverifiedReleaseError as e:  # not the released file, or not known to be: no card with its results
            unverified.append({'name': weight.name, 'source': weight.filename, 'reason': str(e)})
            continue
        exported.append({'name': weight.name, 'folder': folder,
                         'source': weight.filename, 'source_sha256': manifest['source']['sha256']})
    index = {'source_dir': os.path.abspath(source_dir), 'exported': exported, 'skipped': skipped, 'missing': missing,
             'unverified': unverified}
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(os.path.join(output_dir, 'released_index.json'), index)
    return index


def _already_exported(folder: str, source_path: str) -> bool:
    """Whether ``folder`` holds a complete export of ``source_path`` (its manifest records the same SHA-256)."""
    if not os.path.isfile(os.path.join(folder, MANIFEST_NAME)):
        return False
    manifest = read_manifest(folder)
    complete = all(os.path.isfile(os.path.join(folder, f)) for f in manifest.get('files', {}))
    return complete and manifest.get('source', {}).get('sha256') == sha256_file(source_path)
