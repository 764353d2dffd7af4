"""The released weights, read from the model registry: one row per pretrained tag whose URL is a release file.

The table is not written down here: the model files' pretrained cfgs are the single source. A tag is "released"
when its cfg ``url`` starts with the RSPC release prefix (RSPC weights) or the FAN release prefix (the FAN baselines
the paper compares against). `export_all_released` turns a folder of downloaded release files into one export folder
per tag, ready for ``timm-rspc push``.
"""
import fnmatch
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlparse

from timm_rspc.models.paper_results import PAPER_RESULTS, RSPC_RELEASES

__all__ = ['FAN_RELEASES', 'RELEASE_PREFIXES', 'ReleasedWeight', 'released_weights', 'select_released', 'release_of',
           'find_release_file', 'export_all_released']

FAN_RELEASES = 'https://github.com/zhoudaquan/fully_attentional_network_ckpt/releases/download/'
RELEASE_PREFIXES = (RSPC_RELEASES, FAN_RELEASES)

@dataclass(frozen=True)
class ReleasedWeight:
    """A pretrained tag whose weights are a file of an authors' release."""
    name: str  # 'arch.tag'
    url: str

    @property
    def filename(self) -> str:
        """File name of the release asset (also its name in timm's download cache)."""
        return os.path.basename(urlparse(self.url).path)

    @property
    def is_rspc(self) -> bool:
        return self.url.startswith(RSPC_RELEASES)


def _package_model(name: str) -> bool:
    from timm.models import get_arch_name, is_model, model_entrypoint
    arch = get_arch_name(name)
    return is_model(arch) and model_entrypoint(arch).__module__.startswith('timm_rspc.')


def released_weights(pattern: str = '*') -> List[ReleasedWeight]:
    """Registered ``arch.tag`` names (matching the wildcard ``pattern``) whose weights are release files.

    Aliases (e.g. ``rvt_s_rspc.rspc_in1k``) share their release file with a canonical tag and are not listed twice:
    per file, the tag with published results (`paper_results`) wins, else the first registered name.
    """
    import timm
    import timm_rspc  # noqa: F401
    from timm.models import get_pretrained_cfg
    registered = ((name, getattr(get_pretrained_cfg(name), 'url', None) or '')
                  for name in timm.list_pretrained() if _package_model(name))
    return select_released(registered, pattern)


def select_released(registered: Iterable[Tuple[str, str]], pattern: str = '*') -> List[ReleasedWeight]:
    """`released_weights` of ``(arch.tag, url)`` pairs: release URLs only, one tag per file, matching ``pattern``."""
    by_url: Dict[str, str] = {}
    for name, url in registered:
        if url.startswith(RELEASE_PREFIXES) and (url not in by_url or (
                name in PAPER_RESULTS and by_url[url] not in PAPER_RESULTS)):
            by_url[url] = name
    return sorted((ReleasedWeight(name, url) for url, name in by_url.items() if fnmatch.fnmatch(name, pattern)),
                  key=lambda w: w.name)


def release_of(name: str) -> Optional[ReleasedWeight]:
    """The release row of ``name`` (an ``arch.tag`` or an alias of one), or None if its weights are no release file."""
    from timm.models import get_pretrained_cfg
    import timm_rspc  # noqa: F401
    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, KeyError):
        return None
    url = getattr(cfg, 'url', None) or ''
    if not url.startswith(RELEASE_PREFIXES):
        return None
    return next((w for w in released_weights() if w.url == url), ReleasedWeight(name, url))


def find_release_file(folder: str, weight: ReleasedWeight) -> Optional[str]:
    """The downloaded file of ``weight`` in ``folder`` (or in its ``checkpoints/`` subfolder, torch hub's layout)."""
    for candidate in (os.path.join(folder, weight.filename), os.path.join(folder, 'checkpoints', weight.filename)):
        if os.path.isfile(candidate):
            return candidate
    return None


def export_all_released(
        source_dir: str,
        output_dir: str,
        pattern: str = '*',
        hub_org: Optional[str] = None,
        overwrite: bool = False,
        weights: Optional[List[ReleasedWeight]] = None,
) -> Dict[str, Any]:
    """Export every released weight found in ``source_dir`` into ``output_dir/<arch.tag>/``.

    Files that are not there are listed under ``missing`` with the URL to download them from; the others are
    exported (non-EMA weights, strictly validated, with a model card). Tags already exported from the same source
    file (same SHA-256) are skipped, so the command can be re-run as downloads complete; other existing export files
    are never replaced unless ``overwrite``. ``output_dir/released_index.json`` records the outcome of the last run.
    ``weights`` defaults to the registry's `released_weights` (``pattern`` filters it).
    """
    from .export import export_model
    if not os.path.isdir(source_dir):
        raise NotADirectoryError(f"No folder of downloaded release files at '{source_dir}'.")
    weights = released_weights(pattern) if weights is None else weights
    if not weights:
        raise ValueError(f"No released weights are registered for '{pattern}'; list them with "
                         "`timm-rspc models --pretrained`.")
    exported, skipped, missing = [], [], []
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
        manifest = export_model(
            folder, weight.name, checkpoint=path, repo_id=repo_id,
            overwrite=overwrite)
        exported.append({'name': weight.name, 'folder': folder,
                         'source': weight.filename, 'source_sha256': manifest['source']['sha256']})
    index = {'source_dir': os.path.abspath(source_dir), 'exported': exported, 'skipped': skipped, 'missing': missing}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'released_index.json'), 'w') as f:
        json.dump(index, f, indent=2)
        f.write('\n')
    return index


def _already_exported(folder: str, source_path: str) -> bool:
    """Whether ``folder`` holds a complete export of ``source_path`` (its manifest records the same SHA-256)."""
    from .convert import sha256_file
    from .export import MANIFEST_NAME, read_manifest
    if not os.path.isfile(os.path.join(folder, MANIFEST_NAME)):
        return False
    manifest = read_manifest(folder)
    complete = all(os.path.isfile(os.path.join(folder, f)) for f in manifest.get('files', {}))
    return complete and manifest.get('source', {}).get('sha256') == sha256_file(source_path)
