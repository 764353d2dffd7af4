"""Training checkpoint -> clean safetensors state dict, validated against the model it belongs to.

A released ``.pth.tar`` (or a ``timm-rspc train`` checkpoint) holds two sets of weights (non-EMA ``state_dict`` and
``state_dict_ema``), optimiser state and the training arguments. A conversion keeps exactly one set of weights, chosen
explicitly, in timm's native key layout: the checkpoint is read weights-only by `checkpoint_loading`, passed through
the model family's ``checkpoint_filter_fn`` and loaded strictly into a freshly built model, and the file written is
that model's ``state_dict()``. So a converted file always loads strictly into ``timm.create_model(name)``.

Next to ``NAME.safetensors`` a ``NAME.json`` record names the model, the weights chosen and the SHA-256 of the source
and of the output, so anyone can check that a file on the Hub is the conversion of a given release file.
"""
import os
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from timm_rspc.files import atomic_write_json, sha256_file  # sha256_file also for export, push, export_released
from timm_rspc.models.build import (
    build_arguments, check_model_name, create_model, load_weights, recorded_training_args, same_architecture,
)
from timm_rspc.models.checkpoint_loading import read_checkpoint

__all__ = [
    'sha256_file', 'build_model', 'model_from_checkpoint', 'save_state_dict', 'convert_checkpoint',
    'refuse_existing', 'default_file_mode',
]


def default_file_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open()`` gives a new file."""
    try:
        with open('/proc/self/status') as f:  # Linux: read without changing it
            for line in f:
                if line.startswith('Umask:'):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # elsewhere: read by setting it, restored at once
    os.umask(umask)
    return 0o666 & ~umask


def refuse_existing(paths, what: str = 'file', flag: str = '--overwrite') -> None:
    """Raise `FileExistsError` naming every path that exists: outputs never replace the user's files silently."""
    existing = [os.fspath(p) for p in paths if os.path.exists(p)]
    if existing:
        raise FileExistsError(
            f"Refusing to overwrite existing {what}{'s' if len(existing) > 1 else ''}: {', '.join(existing)}. "
            f"Choose another output or pass {flag} to replace {'them' if len(existing) > 1 else 'it'}."
        )


def build_model(
        model_name: str,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        pretrained: bool = False,
) -> nn.Module:
    """The model to export: `models.build.create_model`; ``num_classes=None`` keeps the cfg's default."""
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    return create_model(model_name, pretrained=pretrained, **kwargs)


def model_from_checkpoint(
        path: str,
        model_name: Optional[str] = None,
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the model a checkpoint belongs to and load its (EMA or non-EMA) weights strictly.

    ``model_name`` defaults to the ``--model`` of the training run recorded in the checkpoint (or the ``args.yaml``
    beside it). When that run's model has the same architecture, its build arguments are used too (explicit
    arguments win), as `bench` builds the model (`models.build`).

    Returns ``(model in eval mode, training arguments of the run)``.
    """
    checkpoint = read_checkpoint(path)
    args, recorded_from = recorded_training_args(os.fspath(path), checkpoint)
    recorded_name = args.get('model') if isinstance(args.get('model'), str) else None
    if model_name is None and recorded_name is None:
        raise ValueError(f"'{os.fspath(path)}' does not record which model it belongs to; pass the model name "
                         "(--model NAME, e.g. rvt_small_plus.rspc_in1k).")
    model_name = model_name or recorded_name
    check_model_name(model_name)
    kwargs = build_arguments(args)[0] if recorded_name and same_architecture(model_name, recorded_name) else {}
    kwargs.update(model_kwargs or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = create_model(model_name, recorded_from=recorded_from, **kwargs)
    load_weights(model, checkpoint, f"'{os.fspath(path)}' ({'EMA' if use_ema else 'non-EMA'})", use_ema=use_ema,
                 ema_flag='--ema')
    return model.eval(), args


def save_state_dict(model: nn.Module, path: str) -> str:
    """Write ``model.state_dict()`` as safetensors; returns the file's SHA-256."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={'format': 'pt'})
    os.chmod(path, default_file_mode())  # safetensors creates its files 0600; give it the mode of any other file
    return sha256_file(path)


def _output_paths(output: str) -> Tuple[str, str]:
    output = os.fspath(output)
    if not output.endswith('.safetensors'):
        raise ValueError(f"The output of a conversion is a .safetensors file, got '{output}'.")
    return output, output[:-len('.safetensors')] + '.json'


def convert_checkpoint(
        checkpoint: str,
        output: str,
        model_name: Optional[str] = None,
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        overwrite: bool = False,
) -> Dict[str, Any]:
    """Convert ``checkpoint`` to ``output`` (``.safetensors``) and write the record ``output`` with ``.json``.

    The record is returned too: model name, number of classes, which weights (EMA or not), the source file's name
    and SHA-256, the output's SHA-256, and the number of parameters.
    """
    weights_path, record_path = _output_paths(output)
    if os.path.abspath(weights_path) == os.path.abspath(checkpoint):
        raise ValueError('The output would replace the checkpoint being converted; choose another output path.')
    if not overwrite:
        refuse_existing([weights_path, record_path])
    model, _ = model_from_checkpoint(
        checkpoint, model_name=model_name, use_ema=use_ema, num_classes=num_classes, model_kwargs=model_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(weights_path)), exist_ok=True)
    record = {
        'model': model_name or model.pretrained_cfg.get('architecture'),
        'architecture': model.pretrained_cfg.get('architecture'),
        'num_classes': model.num_classes,
        'weights': 'ema' if use_ema else 'non-ema',
        'source': os.path.basename(os.fspath(checkpoint)),
        'source_sha256': sha256_file(checkpoint),
        'file': os.path.basename(weights_path),
        'sha256': save_state_dict(model, weights_path),
        'num_params': sum(p.numel() for p in model.parameters()),
    }
    atomic_write_json(record_path, record)
    return record
