"""Reading released checkpoints safely and loading them into models strictly.

The RSPC, RVT and FAN weights are released as pickled training checkpoints (`.pth.tar`), not as bare state dicts:

* timm training checkpoints: ``{'state_dict', 'state_dict_ema'?, 'arch', 'epoch', 'args': argparse.Namespace, ...}``
* DeiT-style checkpoints (official RVT, FAN): ``{'model', 'model_ema'?, 'optimizer', 'args', ...}``
* a bare state dict, or a ``.safetensors`` file.

`read_state_dict` reads any of them with ``torch.load(weights_only=True)``: only tensors, containers, numbers and the
few plain record types allow-listed below are ever reconstructed, never arbitrary objects. The non-EMA weights are
chosen unless ``use_ema=True``: the numbers the authors report come from the non-EMA ``state_dict``.

`load_checkpoint` then applies a model family's ``checkpoint_filter_fn`` and loads strictly: a missing, unexpected or
mis-shaped key raises `CheckpointMismatchError` naming the keys, and a classifier of another size says so (the file's
and the model's head shapes), unless the caller asked for a new classifier.

`build_model_with_package_loader` is how every model family builds its models: timm's ``build_model_with_cfg``, with
every weight file (the release files of the pretrained cfgs, and any file or URL a user gives in
``pretrained_cfg_overlay``) loaded by ``model.load_pretrained(path)`` (``custom_load=True``), i.e. by this module,
never by timm's generic loader (which picks EMA weights first and unpickles fully). timm downloads release files into
its cache (``~/.cache/torch/hub/checkpoints/<release filename>``, reused offline); without network and without the
file there, the error says where to put it.
"""
import argparse
import logging
import os
import io
import pickle
import pickletools
import urllib.error
import urllib.parse
import zipfile
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

_logger = logging.getLogger(__name__)

__all__ = [
    'CheckpointError', 'CheckpointMismatchError', 'ClassifierMismatchError', 'DamagedCheckpointError',
    'UnsafeCheckpointError', 'WeightsDownloadError', 'read_checkpoint',
    'read_state_dict', 'select_state_dict', 'load_state_dict_strict', 'check_classifier', 'load_checkpoint',
    'load_pretrained_into', 'family_filter_fn', 'build_model_with_package_loader',
]

# Containers seen in released files, in order of preference for non-EMA and EMA weights.
_MODEL_KEYS = ('state_dict', 'model', 'module')
_EMA_KEYS = ('state_dict_ema', 'model_ema', 'module_ema')


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or has no usable weights."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not match the model; the message names the keys."""


class ClassifierMismatchError(CheckpointMismatchError):
    """A checkpoint whose classifier is for another number of classes than the model's (all else matching)."""


class DamagedCheckpointError(CheckpointError):
    """A file that is not a complete checkpoint (empty, truncated, not a PyTorch or safetensors file)."""

    def __init__(self, message: str, path: str, reason: str):
        super().__init__(message)
        self.path, self.reason = path, reason


class UnsafeCheckpointError(CheckpointError):
    """A file whose pickle would import Python objects other than weights (``globals``, read without running it)."""

    def __init__(self, message: str, path: str, globals_: Tuple[str, ...]):
        super().__init__(message)
        self.path, self.globals = path, globals_


class WeightsDownloadError(CheckpointError):
    """A release file that is neither in timm's download cache nor downloadable; the message says where to put it."""


def _safe_globals() -> list:
    """Plain record types found in released training checkpoints, safe to rebuild (no code runs)."""
    allowed = [argparse.Namespace]
    try:  # timm checkpoints may store the best metric as a numpy scalar
        import numpy as np
    except ImportError:  # pragma: no cover
        return allowed
    numpy_core = getattr(np, '_core', None) or np.core
    allowed += [numpy_core.multiarray.scalar, np.dtype]
    allowed += list({type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')})
    return allowed


def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then its JSON header ('{')."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < os.path.getsize(path)


def _download_cache_dir() -> str:
    """Where timm keeps downloaded weight files (``<torch hub dir>/checkpoints``)."""
    from timm.models._hub import get_cache_dir
    return get_cache_dir()


def _in_download_cache(path: str) -> bool:
    cache = os.path.realpath(_download_cache_dir())
    return os.path.commonpath([cache, os.path.realpath(path)]) == cache


def _damaged(path: str, what: str) -> DamagedCheckpointError:
    if _in_download_cache(path):
        return DamagedCheckpointError(
            f"This cached download is damaged ({what}): delete '{path}' and download again.", path, what)
    return DamagedCheckpointError(
        f"'{path}' is damaged ({what}): it is not a complete PyTorch or safetensors checkpoint.", path, what)


def _rebuilt_by_torch(name: str) -> bool:
    """Whether ``module.name`` is one of the objects any plain checkpoint's pickle imports and torch's weights-only
    loader rebuilds itself (tensor and parameter rebuilders, storages, dtypes, sizes, OrderedDict, byte strings).
    Only used to name, after torch refused a file, the imports that made it refuse: the refusal itself is torch's."""
    module, _, attr = name.rpartition('.')
    if name in ('collections.OrderedDict', '_codecs.encode', 'builtins.set', 'builtins.frozenset',
                'builtins.bytearray', 'builtins.slice', 'builtins.complex'):
        return True
    if module in ('torch._utils', 'torch._tensor'):
        return attr.startswith('_rebuild')
    if module in ('torch', 'torch.storage'):
        return attr.endswith('Storage') or attr in ('Size', 'device') or isinstance(getattr(torch, attr, None),
                                                                                     torch.dtype)
    return name == 'torch.nn.parameter.Parameter'


def _pickle_globals(path: str) -> Tuple[str, ...]:
    """The Python objects (``module.name``) the file's pickle imports, read with ``pickletools`` without executing
    anything; empty when the pickle cannot even be parsed (damaged rather than unsafe)."""
    found, strings = [], []
    try:
        with _open_pickle(path) as f:
            while f.peek(1)[:1]:  # a legacy torch file holds several pickles in a row
                for opcode, arg, _ in pickletools.genops(f):
                    if opcode.name == 'GLOBAL':
                        found.append(arg.replace(' ', '.'))
                    elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                        found.append('.'.join(strings[-2:]))
                    elif isinstance(arg, str):
                        strings.append(arg)
                if zipfile.is_zipfile(path):
                    break
    except Exception:  # not parseable as a pickle
        return ()
    return tuple(dict.fromkeys(found))


def _open_pickle(path: str):
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
        return io.BufferedReader(archive.open(name))
    return open(path, 'rb')


def _disallowed_globals(path: str) -> Tuple[str, ...]:
    allowed = {f'{t.__module__}.{t.__qualname__}' for t in _safe_globals()}
    return tuple(sorted(name for name in _pickle_globals(path) if name not in allowed and not _rebuilt_by_torch(name)))


def read_checkpoint(path: str, map_location: str = 'cpu', mmap: bool = False) -> Any:
    """Read a checkpoint file without unpickling arbitrary objects; returns what the file holds.

    The package's one reader: pretrained and overlay files, `load_checkpoint`, ``--resume``, ``--initial-checkpoint``,
    convert, export, bench and analyze all read through it, each wording its errors for its own flag. One allow-list
    (`_safe_globals`: argparse's Namespace, numpy scalars). A file that cannot be read raises
    `DamagedCheckpointError` (empty, truncated, not a checkpoint; for a file in timm's download cache: delete it and
    download again) or `UnsafeCheckpointError` (its pickle imports other Python objects, listed in ``globals``), never
    with advice to unpickle it fully. ``mmap`` maps the tensors of a zip-format file instead of reading them.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at '{path}'.")
    if os.path.getsize(path) == 0:
        raise _damaged(path, 'an empty file (0 bytes), e.g. an interrupted copy')
    if path.endswith('.safetensors') or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except SafetensorError as e:
            raise _damaged(path, f'unreadable safetensors file: {e}') from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        found = _disallowed_globals(path)
        if found:
            raise UnsafeCheckpointError(
                f"'{path}' is unsafe to read: it would import {', '.join(found)} when loaded, Python objects other "
                "than weights. timm-rspc never unpickles arbitrary objects. If you trust the file, load it once in a "
                "trusted environment and re-save only its tensors (torch.save(state_dict) or safetensors).",
                path, found) from None
        raise _damaged(path, f'not a checkpoint: {_first_sentence(e)}') from None
    except Exception as e:  # torch raises RuntimeError, EOFError, OSError, IndexError ... for truncated files
        raise _damaged(path, f'truncated or corrupt: {_first_sentence(e)}') from None


def _first_sentence(error: BaseException) -> str:
    """torch's messages run to several sentences (and may suggest unsafe loading): the first one."""
    text = str(error).strip()
    return text.split('. ')[0].splitlines()[0] if text else type(error).__name__


def select_state_dict(checkpoint: Any, use_ema: bool = False, source: str = 'checkpoint',
                      ema_flag: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Pick the model weights out of a loaded checkpoint container and strip wrapper prefixes.

    Non-EMA weights are returned unless ``use_ema``; asking for EMA weights of a file that has none is an error that
    tells the user to drop ``ema_flag`` (the command's flag, e.g. ``--ema``; default: the ``use_ema`` argument).
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, expected a dict of weights.")
    keys = _EMA_KEYS if use_ema else _MODEL_KEYS
    for key in keys:
        value = checkpoint.get(key)
        if isinstance(value, dict) and value:
            state_dict = value
            break
    else:
        if use_ema:
            raise CheckpointError(
                f"{source} has no EMA weights (no {' / '.join(_EMA_KEYS)}; it holds "
                f"{', '.join(sorted(map(str, checkpoint))[:12])}): drop {ema_flag or 'use_ema=True'} to use its "
                f"non-EMA weights."
            )
        state_dict = checkpoint  # a bare state dict
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(
            f"{source} does not hold a state dict of tensors (top-level keys: "
            f"{', '.join(sorted(map(str, checkpoint))[:12])})."
        )
    return _strip_prefixes(state_dict)


def _strip_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the prefixes DDP (``module.``) and torch.compile (``_orig_mod.``) add to every key."""
    for prefix in ('module.', '_orig_mod.'):
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def read_state_dict(path: str, use_ema: bool = False, map_location: str = 'cpu') -> Dict[str, torch.Tensor]:
    """Read a checkpoint file of any supported container format and return its (EMA or non-EMA) state dict."""
    return select_state_dict(read_checkpoint(path, map_location), use_ema=use_ema, source=f"'{os.fspath(path)}'")


def _describe(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Load ``state_dict`` into ``model``, raising `CheckpointMismatchError` that names every offending key."""
    expected = model.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mis_shaped = {
        k: (tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    }
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if mis_shaped:
            shown = [f"{k} {src} vs model {dst}" for k, (src, dst) in sorted(mis_shaped.items())[:12]]
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): " + '; '.join(shown))
        lines.append("Check that the model name (and num_classes / img_size) matches the checkpoint.")
        raise CheckpointMismatchError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=True)


def _classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """Module names of the classifier: the pretrained cfg's, else the module ``get_classifier()`` returns."""
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    if classifier:
        return (classifier,) if isinstance(classifier, str) else tuple(classifier)
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    return tuple(name for name, module in model.named_modules() if head is not None and module is head)


def check_classifier(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Raise `CheckpointMismatchError` if the checkpoint's classifier has another shape than the model's.

    A head of another size means the weights are not the ones the model was built for (e.g. a CIFAR-10 file cached
    under an ImageNet release name); it is never silently replaced by a random one.
    """
    expected = model.state_dict()
    names = _classifier_names(model)
    head_keys = {f'{name}.{p}' for name in names for p in ('weight', 'bias')}
    if set(state_dict) != set(expected) or any(
            state_dict[k].shape != v.shape for k, v in expected.items() if k not in head_keys):
        return  # not (only) the classifier: the strict load names every offending key
    for name in names:
        key = f'{name}.weight'
        if key in state_dict and state_dict[key].shape != expected[key].shape:
            found, wanted = tuple(state_dict[key].shape), tuple(expected[key].shape)
            raise ClassifierMismatchError(
                f"{source} has a classifier for {found[0]} classes ({key} {found}), the model one for {wanted[0]} "
                f"({key} {wanted}): these are not the weights the model was built for. Build the model with "
                f"num_classes={found[0]} to load them."
            )


def load_checkpoint(
        model: nn.Module,
        path: str,
        filter_fn: Optional[Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]] = None,
        use_ema: bool = False,
        adapt_classifier: bool = False,
) -> nn.Module:
    """Load the weights of a checkpoint file of any supported format into ``model``, strictly.

    Args:
        model: The model to load into.
        path: Checkpoint file (``.pth``, ``.pth.tar``, ``.bin``, ``.safetensors``).
        filter_fn: Family-specific key remapping (``checkpoint_filter_fn`` of the model file); defaults to the one
            of the model's module if it has one.
        use_ema: Load the EMA weights instead of the (default) non-EMA ones.
        adapt_classifier: If the model has a different number of classes than the checkpoint, keep the model's
            freshly initialised classifier instead of raising (timm's behaviour for ``pretrained=True,
            num_classes=N``: only when the caller asked for another classifier). Only the classifier named in
            the model's pretrained cfg may differ.
    """
    source = f"'{os.fspath(path)}'"
    state_dict = read_state_dict(path, use_ema=use_ema)
    if filter_fn is None:
        filter_fn = family_filter_fn(model)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except CheckpointMismatchError as e:  # the family's check knows the weights, not the file
            raise CheckpointMismatchError(f'{source}: {e}') from None
    if not adapt_classifier:
        check_classifier(model, state_dict, source)
    else:
        expected = model.state_dict()
        for name in _classifier_names(model):
            for suffix in ('.weight', '.bias'):
                key = name + suffix
                if key in state_dict and key not in expected:  # num_classes=0: the model has no classifier
                    del state_dict[key]
                elif key in state_dict and state_dict[key].shape != expected[key].shape:
                    _logger.info(f'Keeping the new classifier {key}: checkpoint {tuple(state_dict[key].shape)}, '
                                 f'model {tuple(expected[key].shape)}.')
                    state_dict[key] = expected[key]
    load_state_dict_strict(model, state_dict, source=source)
    _logger.info(f"Loaded {'EMA' if use_ema else 'non-EMA'} weights from {source}.")
    return model


def family_filter_fn(model: nn.Module) -> Optional[Callable]:
    """The ``checkpoint_filter_fn`` of the model file that defines ``model``'s class, if it has one."""
    import sys
    module = sys.modules.get(type(model).__module__)
    return getattr(module, 'checkpoint_filter_fn', None)


def load_pretrained_into(model: nn.Module, path: str, filter_fn: Callable) -> None:
    """Body of a model's ``load_pretrained(path)``, which timm calls for cfgs with ``custom_load=True``.

    The classifier is replaced by the model's new one only if the model was built with another ``num_classes``
    than its pretrained cfg's, i.e. the user asked for another classifier; otherwise it must match the file's.
    """
    cfg_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
    new_head = cfg_classes is not None and getattr(model, 'num_classes', cfg_classes) != cfg_classes
    try:
        load_checkpoint(model, path, filter_fn=filter_fn, use_ema=False, adapt_classifier=new_head)
    except ClassifierMismatchError as e:
        raise ClassifierMismatchError(
            f'{e} To train a new classifier instead, give timm.create_model another num_classes explicitly.'
        ) from None


def _with_package_loader(overlay: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """timm resets ``custom_load`` when a user gives a file or URL; keep it, so that file loads through this module."""
    if overlay and (overlay.get('file') or overlay.get('url')) and 'custom_load' not in overlay:
        return dict(overlay, custom_load=True)
    return overlay


def build_model_with_package_loader(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False,
                                    **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` with every weight file loaded by ``model.load_pretrained`` (this module).

    Release files missing offline raise `WeightsDownloadError` naming the file and the cache folder to put it in.
    """
    from timm.models import build_model_with_cfg
    if 'pretrained_cfg_overlay' in kwargs:
        kwargs['pretrained_cfg_overlay'] = _with_package_loader(kwargs['pretrained_cfg_overlay'])
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # URLError includes HTTPError
        if not pretrained:
            raise
        from timm.models._builder import resolve_pretrained_cfg
        url = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).url or ''
        filename = os.path.basename(urllib.parse.urlparse(url).path) or '<release file>'
        raise WeightsDownloadError(
            f"Could not download the weights of '{variant}' from {url} ({getattr(e, 'reason', e)}). Without "
            f"network, put the release file at '{os.path.join(_download_cache_dir(), filename)}' (timm's download "
            "cache) and try again."
        ) from None
