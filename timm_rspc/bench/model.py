"""The model under evaluation, built the way it was trained, and the input size it is evaluated at.

A ``timm-rspc train`` or timm ``train.py`` checkpoint stores the run's arguments (``args``), and both write an
``args.yaml`` beside their checkpoints. The build arguments found there (``model_kwargs``, ``num_classes``,
``in_chans``, ``gp``) and the evaluation size (``img_size`` / ``input_size``) are the defaults; explicit arguments
win (timm validate.py's ``--num-classes``, ``--img-size``, ``--input-size``, ``--model-kwargs``, ``--use-ema``).
Without a recorded or explicit size, a model built for another size (``img_size=N`` in its build arguments) is
evaluated at that size, as the trainer feeds it. The checkpoint is read once, by `models.checkpoint_loading`.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from timm_rspc.files import sha256_file

__all__ = ['EvalModel', 'build_eval_model', 'eval_data_config', 'check_input_size']


@dataclass
class EvalModel:
    model: nn.Module
    source: Dict[str, Any]  # where the weights come from (settings.json 'weights')
    build: Dict[str, Any]  # the create_model keyword arguments used (num_classes included)
    size: Dict[str, Any] = field(default_factory=dict)  # img_size / input_size for resolve_data_config
    recorded_from: Optional[str] = None  # the checkpoint or args.yaml whose arguments were used


def _default_size(build: Dict[str, Any]) -> Dict[str, Any]:
    """A model built for another size (``img_size=N`` or ``(H, W)``) is evaluated at that size."""
    img_size = build.get('img_size')
    if isinstance(img_size, int):
        return {'img_size': img_size}
    if isinstance(img_size, (tuple, list)) and len(img_size) == 2:
        return {'input_size': [int(build.get('in_chans', 3)), int(img_size[0]), int(img_size[1])]}
    return {}


def build_eval_model(
        model_name: str,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        img_size: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
        use_ema: bool = False,
        use_recorded_args: bool = True,
) -> EvalModel:
    """Build ``model_name`` (timm.create_model) and load its weights strictly (non-EMA unless ``use_ema``)."""
    from timm_rspc.models.build import (
        build_arguments, check_model_name, create_model, load_weights, recorded_training_args, same_architecture)
    from timm_rspc.models.checkpoint_loading import read_checkpoint
    if pretrained and checkpoint:
        raise ValueError('give one source of weights: pretrained=True (--pretrained) or a checkpoint file, not both.')
    if use_ema and not checkpoint:
        raise ValueError('use_ema (--use-ema) picks the EMA weights of a checkpoint file; give --checkpoint.')
    if img_size is not None and input_size is not None:
        raise ValueError('give --img-size or --input-size, not both.')
    check_model_name(model_name)
    stored, recorded_from = None, None
    build: Dict[str, Any] = {}
    size: Dict[str, Any] = {}
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"--checkpoint file '{checkpoint}' does not exist.")
        stored = read_checkpoint(checkpoint)
        if use_recorded_args:
            recorded, recorded_from = recorded_training_args(checkpoint, stored)
            if recorded and same_architecture(model_name, recorded.get('model')):
                build, size = build_arguments(recorded)
            else:
                recorded_from = None
    build.update(model_kwargs or {})
    if num_classes is not None:
        build['num_classes'] = int(num_classes)
    if input_size is not None:
        size = {'input_size': [int(v) for v in input_size]}
        build.setdefault('in_chans', int(input_size[0]))
    elif img_size is not None:
        size = {'img_size': int(img_size)}
    elif 'img_size' in (model_kwargs or {}) or not size:
        size = _default_size(build) or size
    model = create_model(model_name, pretrained=pretrained, recorded_from=recorded_from, **build)
    build['num_classes'] = getattr(model, 'num_classes', build.get('num_classes'))
    if stored is not None:
        load_weights(model, stored, f"'{checkpoint}'", use_ema=use_ema, ema_flag='--use-ema')
        del stored
        source = {'checkpoint': os.path.abspath(checkpoint), 'sha256': sha256_file(checkpoint),
                  'weights': 'ema' if use_ema else 'non-ema'}
    elif pretrained:
        cfg = model.pretrained_cfg
        source = {'pretrained': f"{cfg.get('architecture', model_name)}.{cfg.get('tag', '')}".rstrip('.'),
                  'hf_hub_id': cfg.get('hf_hub_id'), 'url': cfg.get('url')}
    else:
        source = {'random_init': True}
    return EvalModel(model.eval(), source, build, size, recorded_from)


def eval_data_config(built: EvalModel) -> Dict[str, Any]:
    """timm's ``resolve_data_config`` of the model, at the evaluation size chosen by `build_eval_model`."""
    from timm.data import resolve_data_config
    args = dict(built.size)
    if 'in_chans' in built.build:
        args['in_chans'] = built.build['in_chans']
    return resolve_data_config(args, model=built.model)


def check_input_size(model: nn.Module, input_size: Sequence[int], model_name: str) -> None:
    """One forward of a blank image: a model that cannot take ``input_size`` fails here, not after the first split."""
    c, h, w = (int(v) for v in input_size)
    try:
        with torch.inference_mode():
            model(torch.zeros(1, c, h, w))
    except (AssertionError, RuntimeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{model_name} does not take {c} x {h} x {w} input ({reason}); evaluate at the size it was "
                         f"built for (--img-size / --input-size) or build it for this one (--model-kwargs "
                         f"img_size={h}).") from None
