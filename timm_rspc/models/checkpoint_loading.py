"""Reading released checkpoints safely and loading them into models strictly.

The RSPC, RVT and FAN weights are released as pickled training checkpoints (`.pth.tar`), not as bare state dicts:

* timm training checkpoints: ``{'state_dict', 'state_dict_ema'?, 'arch', 'epoch', 'args': argparse.Namespace, ...}``
* DeiT-style checkpoints (official RVT, FAN): ``{'model', 'model_ema'?, 'optimizer', 'args', ...}``
* a bare state dict, or a ``.safetensors`` file.

`read_state_dict` reads any of them with ``torch.load(weights_only=True)``: only tensors, containers, numbers and the
few plain record types allow-listed below are ever reconstructed, never arbitrary objects. The non-EMA weights are
chosen unless ``use_ema=True``: the numbers the authors report come from the non-EMA ``state_dict``.

`load_checkpoint` then applies a model family's ``checkpoint_filter_fn`` and loads strictly: a missing, unexpected or
mis-shaped key raises `CheckpointMismatchError` naming the keys. Models hook this into timm's ``pretrained=True`` path
through ``custom_load=True`` in their pretrained cfgs, which makes timm download the release file into its cache
(``~/.cache/torch/hub/checkpoints/<release filename>``, reused offline) and call ``model.load_pretrained(path)``.
"""
import argparse
import logging
import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

_logger = logging.getLogger(__name__)

__all__ = [
    'CheckpointError', 'CheckpointMismatchError', 'read_checkpoint', 'read_state_dict', 'select_state_dict',
    'load_state_dict_strict', 'load_checkpoint', 'load_pretrained_into', 'family_filter_fn',
]

# Containers seen in released files, in order of preference for non-EMA and EMA weights.
_MODEL_KEYS = ('state_dict', 'model', 'module')
_EMA_KEYS = ('state_dict_ema', 'model_ema', 'module_ema')


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or has no usable weights."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not match the model; the message names the keys."""


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


def read_checkpoint(path: str, map_location: str = 'cpu') -> Any:
    """Read a checkpoint file without unpickling arbitrary objects; returns what the file holds."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at '{path}'.")
    if path.endswith('.safetensors') or _looks_like_safetensors(path):
        from safetensors.torch import load_file
        return load_file(path, device=str(map_location))
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError for corrupt zip files)
        raise CheckpointError(
            f"Could not read '{path}' as a weights-only checkpoint: {e}\n"
            "timm-rspc never unpickles arbitrary objects. If this file holds other Python objects, load it once in "
            "a trusted environment and re-save only its tensors (torch.save(state_dict) or safetensors)."
        ) from e


def select_state_dict(checkpoint: Any, use_ema: bool = False, source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Pick the model weights out of a loaded checkpoint container and strip wrapper prefixes.

    Non-EMA weights are returned unless ``use_ema``; asking for EMA weights of a file that has none is an error.
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
                f"{source} has no EMA weights (looked for {', '.join(_EMA_KEYS)}; it has: "
                f"{', '.join(sorted(map(str, checkpoint))[:12])}). Load without use_ema."
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
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


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
            num_classes=N``). Only the classifier named in the model's pretrained cfg may differ.
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
    if adapt_classifier:
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
    """Body of a model's ``load_pretrained(path)``, which timm calls for cfgs with ``custom_load=True``."""
    load_checkpoint(model, path, filter_fn=filter_fn, use_ema=False, adapt_classifier=True)
