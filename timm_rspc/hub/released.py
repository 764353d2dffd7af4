"""The released weights, read from the model registry: one row per pretrained tag whose URL is a release file.

The table is not written down here: the model files' pretrained cfgs are the single source. A tag is "released"
when its cfg ``url`` starts with the RSPC release prefix (RSPC weights) or the FAN release prefix (the FAN baselines
the paper compares against). This module only answers questions about the registry; exporting the release files is
`export_released`'s job.
"""
import fnmatch
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlparse

from timm_rspc.models.paper_results import PAPER_RESULTS
from timm_rspc.models.release_info import FAN_RELEASES, RELEASE_PREFIXES, RSPC_RELEASES

__all__ = ['FAN_RELEASES', 'RELEASE_PREFIXES', 'ReleasedWeight', 'released_weights', 'select_released', 'release_of',
           'find_release_file']


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
