"""A model -> a folder in timm's Hugging Face Hub format, loadable by ``timm.create_model('local-dir:...')``.

The folder holds what a Hub repository of timm weights holds, written by timm's own `save_for_hf`:

* ``model.safetensors``: the model's ``state_dict()`` in timm's native key layout;
* ``config.json``: architecture, num_classes, model_args (the factory arguments that rebuild the model, e.g.
  ``img_size``) and pretrained_cfg (preprocessing, classifier name, ...);
* ``README.md``: the model card (`model_card`);
* ``timm_rspc_export.json``: provenance (source file and SHA-256, which weights, SHA-256 of every file above).

Existing files of a folder are never replaced unless ``overwrite=True``; files are written to a staging folder next
to the destination first, so a failed export leaves nothing half-written behind. Every file gets the mode any new
file of the user gets (``0666`` less the umask, e.g. ``0644``), whatever the writer (safetensors writes ``0600``).
"""
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from timm_rspc._timm_compat import EXPORT_MIN_VERSION, require_timm
from timm_rspc.models.release_info import RELEASE_SHA256

from .convert import build_model, default_file_mode, model_from_checkpoint, refuse_existing, sha256_file
from .model_card import build_model_card, model_stats, read_args_yaml, read_results
from .released import ReleasedWeight, release_of

__all__ = ['MANIFEST_NAME', 'EXPORT_FILES', 'UnverifiedReleaseError', 'prepare_model', 'export_model', 'write_export',
           'read_manifest']

MANIFEST_NAME = 'timm_rspc_export.json'
EXPORT_FILES = ('model.safetensors', 'config.json', 'README.md', MANIFEST_NAME)

class UnverifiedReleaseError(ValueError):
    """Weights that claim to be a release file (by name or tag) but whose SHA-256 does not confirm it."""


def _unconfirmed(release: ReleasedWeight, sha256: Optional[str]) -> Optional[str]:
    """Why the weights of ``sha256`` are not confirmed to be ``release``'s file (None when they are)."""
    known = RELEASE_SHA256.get(release.filename)
    if known is None:
        return (f'no SHA-256 of the release file {release.filename} is recorded '
                '(timm_rspc.models.release_info.RELEASE_SHA256)')
    if sha256 is None:
        return 'the downloaded file is not in the cache to hash'
    if sha256 != known:
        return f'its SHA-256 {sha256[:12]}... is not the release file\'s {known[:12]}...'
    return None


# pretrained_cfg fields that describe a registered release; wrong for weights of one's own run.
_RELEASE_ONLY_FIELDS = ('tag', 'notes', 'origin_url', 'paper_ids', 'paper_name', 'license')


def prepare_model(
        model_name: str,
        checkpoint: Optional[str] = None,
        pretrained: bool = False,
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build ``model_name`` with the weights to export: a checkpoint file (strict) or the registry's pretrained ones.

    Returns ``(model, info)``; ``info`` has ``source`` (file name / URL and SHA-256), ``weights`` ('ema' or
    'non-ema'), ``release`` (the `ReleasedWeight` when the weights are an unmodified release file, else None) and
    ``train_args`` (the arguments stored in the checkpoint, {} if none) and ``unconfirmed`` (why weights that
    claim to be a release file are not confirmed to be it by its recorded SHA-256; then ``release`` is None).
    """
    if (checkpoint is None) == (not pretrained):
        raise ValueError('Give exactly one source of weights: a checkpoint file or pretrained=True.')
    release = release_of(model_name)
    if checkpoint is not None:
        model, train_args = model_from_checkpoint(
            checkpoint, model_name=model_name, use_ema=use_ema, num_classes=num_classes, model_kwargs=model_kwargs)
        source = {'file': os.path.basename(os.fspath(checkpoint)), 'sha256': sha256_file(checkpoint)}
        # Only an unmodified release file, read as released (non-EMA, own classifier), carries the paper's numbers.
        if release is None or source['file'] != release.filename or use_ema or (
                num_classes is not None and num_classes != model.pretrained_cfg.get('num_classes')):
            release = None
        unconfirmed = _unconfirmed(release, source['sha256']) if release is not None else None
        return model, {'source': source, 'weights': 'ema' if use_ema else 'non-ema',
                       'release': None if unconfirmed else release, 'unconfirmed': unconfirmed,
                       'train_args': train_args}
    if use_ema:
        raise ValueError('EMA weights can only be chosen from a checkpoint file (--checkpoint PATH --ema).')
    model = build_model(model_name, num_classes=num_classes, model_kwargs=model_kwargs, pretrained=True).eval()
    cfg = model.pretrained_cfg
    source: Dict[str, Any] = {'hf_hub_id': cfg['hf_hub_id']} if cfg.get('hf_hub_id') else {'url': cfg.get('url')}
    if 'url' in source and source['url']:
        from timm.models._hub import check_cached_file, download_cached_file
        if check_cached_file(source['url'], check_hash=False):  # downloaded by create_model just now
            source['sha256'] = sha256_file(download_cached_file(source['url'], check_hash=False))
    if num_classes is not None and num_classes != cfg.get('num_classes'):
        release = None  # the classifier is new, the paper's numbers do not apply
    unconfirmed = _unconfirmed(release, source.get('sha256')) if release is not None else None
    return model, {'source': source, 'weights': 'non-ema', 'release': None if unconfirmed else release,
                   'unconfirmed': unconfirmed, 'train_args': {}}


def read_manifest(folder: str) -> Dict[str, Any]:
    with open(os.path.join(folder, MANIFEST_NAME)) as f:
        return json.load(f)


def _clean_config(config_path: str, is_release: bool, license: Optional[str]) -> None:
    """Drop release-only pretrained_cfg fields from the config of one's own weights (they would mislabel them)."""
    if is_release:
        return
    with open(config_path) as f:
        config = json.load(f)
    pretrained_cfg = config.get('pretrained_cfg', {})
    for key in _RELEASE_ONLY_FIELDS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg['license'] = license or 'apache-2.0'
    with open(config_path, 'w') as f:
        json.dump(config, f, indent=2)


def write_export(
        model: nn.Module,
        out_dir: str,
        card: str,
        provenance: Dict[str, Any],
        overwrite: bool = False,
        is_release: bool = False,
        license: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``model``, its config, ``card`` and the manifest into ``out_dir``; returns the manifest."""
    from timm.models import save_for_hf
    targets = [os.path.join(out_dir, f) for f in EXPORT_FILES]
    if not overwrite:
        refuse_existing(targets, what='export file')
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.timm_rspc_export_', dir=parent)
    try:
        save_for_hf(model, staging, safe_serialization=True)
        _clean_config(os.path.join(staging, 'config.json'), is_release, license)
        with open(os.path.join(staging, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(card)
        manifest = dict(provenance)
        manifest['files'] = {
            f: {'sha256': sha256_file(os.path.join(staging, f)), 'size': os.path.getsize(os.path.join(staging, f))}
            for f in EXPORT_FILES if f != MANIFEST_NAME
        }
        with open(os.path.join(staging, MANIFEST_NAME), 'w') as f:
            json.dump(manifest, f, indent=2)
            f.write('\n')
        mode = default_file_mode()
        for name in EXPORT_FILES:  # safetensors creates its file 0600; every export file gets the usual mode
            os.chmod(os.path.join(staging, name), mode)
        os.makedirs(out_dir, exist_ok=True)
        if not overwrite:  # checked again: the folder may have changed while the model was being saved
            refuse_existing(targets, what='export file')
        for name in EXPORT_FILES:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def export_model(
        out_dir: str,
        model_name: str,
        checkpoint: Optional[str] = None,
        pretrained: bool = False,
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        results: Optional[str] = None,
        args_yaml: Optional[str] = None,
        license: Optional[str] = None,
        overwrite: bool = False,
) -> Dict[str, Any]:
    """Export ``model_name`` with weights from ``checkpoint`` (or ``pretrained``) into ``out_dir``.

    Args:
        out_dir: Destination folder (created; existing export files are refused unless ``overwrite``).
        model_name: timm model name, ``arch.tag`` for released weights.
        checkpoint: Checkpoint file of any format `checkpoint_loading` reads; loaded strictly.
        pretrained: Use the registry's pretrained weights instead of a checkpoint.
        use_ema: Export the checkpoint's EMA weights instead of its (default) non-EMA weights.
        num_classes, model_kwargs: Model build arguments (default: those recorded in the checkpoint, or the cfg's).
        repo_id: The Hub repository the folder is meant for: the card's usage example loads ``hf-hub:`` it; without
            it the example loads this folder (``local-dir:``), and `push_folder` refuses to upload that card.
        results: Results JSON of one's own evaluation (format in `model_card`).
        args_yaml: ``args.yaml`` of the training run (the card lists its recipe); the checkpoint's stored
            arguments are used when not given.
        license: Hub license id of one's own weights (default apache-2.0).

    Returns the manifest written to ``out_dir/timm_rspc_export.json``.
    """
    # timm writes the model's construction arguments into config.json from 1.0.31 (save_for_hf); without them an
    # export of a model built with other arguments reloads as another architecture
    require_timm(EXPORT_MIN_VERSION, 'timm-rspc export')
    if not overwrite:  # fail before the (slow) model build
        refuse_existing([os.path.join(out_dir, f) for f in EXPORT_FILES], what='export file')
    checked_results = read_results(results) if results else None
    train_args = read_args_yaml(args_yaml) if args_yaml else None
    model, info = prepare_model(model_name, checkpoint=checkpoint, pretrained=pretrained, use_ema=use_ema,
                                num_classes=num_classes, model_kwargs=model_kwargs)
    release: Optional[ReleasedWeight] = info['release']
    if info['unconfirmed'] and checked_results is None:
        raise UnverifiedReleaseError(
            f"Not putting the paper's results in the card of '{model_name}': these weights are not confirmed to be "
            f"the released file ({info['unconfirmed']}). Pass --results with the results measured for these "
            "weights (the card then describes them as your own)."
        )
    if train_args is None:
        train_args, args_source = info['train_args'], 'stored in the checkpoint'
    else:
        args_source = os.path.basename(args_yaml)
    stats = model_stats(model)
    weights_note = None
    if checkpoint is not None:
        weights_note = ('EMA weights of the checkpoint.' if use_ema else
                        'Non-EMA weights of the checkpoint' + (
                            ', the ones the paper reports.' if release is not None and release.is_rspc else '.'))
    card = build_model_card(
        model, release.name if release is not None else (repo_id.split('/')[-1] if repo_id else model_name),
        repo_id=repo_id, release=release, results=checked_results, train_args=train_args,
        train_args_source=args_source, license=license, weights_note=weights_note, stats=stats, local_dir=out_dir)
    import timm
    import timm_rspc
    provenance = {
        'model': model_name,
        'architecture': model.pretrained_cfg.get('architecture'),
        'num_classes': model.num_classes,
        'weights': info['weights'],
        'source': info['source'],
        'release': release.name if release is not None else None,
        'repo_id': repo_id,
        'stats': {**stats, 'input_size': list(stats['input_size'])},
        'versions': {'timm': timm.__version__, 'timm_rspc': timm_rspc.__version__},
    }
    return write_export(model, out_dir, card, provenance, overwrite=overwrite, is_release=release is not None,
                        license=license)
