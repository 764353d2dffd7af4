"""Hugging Face Hub repositories of the released weights, by ``arch.tag``, once they exist.

The released weights start life as pickled training checkpoints on GitHub releases; the pretrained cfgs of the model
files point at those URLs (``custom_load=True``, read by `checkpoint_loading`). When a tag is uploaded to the Hub
(``timm-rspc export --all-released`` then ``timm-rspc push``), add one line to `HF_HUB_IDS` and timm will prefer the
Hub copy: safetensors, timm-native keys, no custom loading. Tags without an entry keep loading from their release URL.

Model files apply the table to their cfg dict in one place::

    default_cfgs = generate_default_cfgs(with_hub_ids({
        'rvt_small_plus.rspc_in1k': _cfg(url=RSPC_RELEASES + 'v1.0/rspc_rvt_small.pth.tar', custom_load=True),
    }))

This works because timm resolves a cfg's weight source as: ``hf_hub_id`` if set, else ``url``; and ``custom_load``
only applies to ``url`` / ``file`` sources, so the same cfg reads the release file or the Hub copy correctly.
"""
from typing import Any, Dict, Mapping, Optional

__all__ = ['HF_HUB_IDS', 'with_hub_ids']

# 'arch.tag' -> 'org/repo' (optionally 'org/repo@revision'). Empty until the weights are on the Hub.
HF_HUB_IDS: Dict[str, str] = {}


def with_hub_ids(cfgs: Mapping[str, Any], hub_ids: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Return ``cfgs`` (``arch.tag`` -> cfg dict) with ``hf_hub_id`` set for every tag that has a Hub repository.

    Cfgs that already name an ``hf_hub_id`` keep it; the release ``url`` is kept in every cfg, as the provenance of
    the weights and the fallback when the Hub copy is not used.
    """
    hub_ids = HF_HUB_IDS if hub_ids is None else hub_ids
    out = {}
    for name, cfg in cfgs.items():
        hub_id = hub_ids.get(name.rstrip('*'))
        if hub_id and isinstance(cfg, dict) and not cfg.get('hf_hub_id'):
            cfg = {**cfg, 'hf_hub_id': hub_id}
        out[name] = cfg
    return out
