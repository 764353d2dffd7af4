"""The model under evaluation, built the way it was trained, and the input size it is evaluated at.

A ``timm-rspc train`` or timm ``train.py`` checkpoint stores the run's arguments (``args``), and both write an
``args.yaml`` beside their checkpoints. The build arguments found there (``model_kwargs``, ``num_classes``,
``in_chans``, ``gp``) and the evaluation size (``img_size`` / ``input_size``) are the defaults; explicit arguments
win (timm validate.py's ``--num-classes``, ``--img-size``, ``--input-size``, ``--model-kwargs``, ``--use-ema``).
Without a recorded or explicit size, a model built for another size (``img_size=N`` in its build arguments) is
evaluated at that size, as the trainer feeds it. The checkpoint is read once, by `models.checkpoint_loading`.
"""
import argparse
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['EvalModel', 'build_eval_model', 'eval_data_config', 'check_input_size', 'unknown_model_message',
           'recorded_build_args']

_HUB_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:')


@dataclass
class EvalModel:
    model: nn.Module
    source: Dict[str, Any]  # where the weights come from (settings.json 'weights')
    build: Dict[str, Any]  # the create_model keyword arguments used (num_classes included)
    size: Dict[str, Any] = field(default_factory=dict)  # img_size / input_size for resolve_data_config
    recorded_from: Optional[str] = None  # the checkpoint or args.yaml whose arguments were used


def unknown_model_message(name: str) -> str:
    """'unknown model ...' with close timm names (the trainer's preflight does the same)."""
    import timm
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " List the names with timm.list_models('*pattern*')."
    return f"unknown model '{name}'.{hint}"


def check_model_name(name: str) -> None:
    import timm
    import timm_rspc  # noqa: F401  (registers RVT / FAN)
    if not name.startswith(_HUB_PREFIXES) and not timm.is_model(name):
        raise ValueError(unknown_model_message(name))


def _as_dict(args: Any) -> Dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, dict) else {}


def recorded_build_args(checkpoint_path: str, checkpoint: Any = None) -> Tuple[Dict[str, Any], Optional[str]]:
    """The training arguments stored in the checkpoint (``args``), else those of an ``args.yaml`` beside it."""
    args = _as_dict(checkpoint.get('args')) if isinstance(checkpoint, dict) else {}
    if args:
        return args, os.path.abspath(checkpoint_path)
    yaml_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), 'args.yaml')
    if os.path.isfile(yaml_path):
        import yaml
        with open(yaml_path) as f:
            try:
                args = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"'{yaml_path}' (the training arguments beside --checkpoint) is not valid YAML: "
                                 f"{str(e).splitlines()[0]}") from None
        if isinstance(args, dict):
            return args, yaml_path
    return {}, None


def _same_architecture(name: str, other: Any) -> bool:
    from timm.models import get_arch_name
    return not isinstance(other, str) or get_arch_name(name) == get_arch_name(other)


def _int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _split_recorded(args: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(create_model keyword arguments, evaluation size) of a training run's arguments.

    timm's train.py / ``timm-rspc train``: ``model_kwargs``, ``num_classes``, ``in_chans``, ``gp``, ``img_size``,
    ``input_size`` (C, H, W). DeiT-style scripts (the authors' RVT / FAN releases) record ``input_size`` as one int.
    """
    build = dict(args.get('model_kwargs') or {}) if isinstance(args.get('model_kwargs'), dict) else {}
    if _int(args.get('num_classes')) is not None:
        build['num_classes'] = _int(args['num_classes'])
    input_size, img_size = args.get('input_size'), _int(args.get('img_size'))
    if _int(input_size) is not None:  # DeiT-style: one int
        input_size, img_size = None, _int(input_size)
    elif not (isinstance(input_size, (list, tuple)) and len(input_size) == 3 and all(map(_int, input_size))):
        input_size = None
    in_chans = _int(args.get('in_chans')) or (int(input_size[0]) if input_size else None)
    if in_chans is not None:
        build['in_chans'] = in_chans
    if isinstance(args.get('gp'), str):
        build['global_pool'] = args['gp']
    size: Dict[str, Any] = {}
    if input_size:
        size['input_size'] = [int(v) for v in input_size]
    elif img_size is not None:
        size['img_size'] = img_size
    return build, size


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
    import timm
    import timm_rspc  # noqa: F401  (registers RVT / FAN)
    from timm_rspc.models.checkpoint_loading import (
        CheckpointMismatchError, check_classifier, family_filter_fn, load_state_dict_strict, read_checkpoint,
        select_state_dict)
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
            recorded, recorded_from = recorded_build_args(checkpoint, stored)
            if recorded and _same_architecture(model_name, recorded.get('model')):
                build, size = _split_recorded(recorded)
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
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a randomly initialised model is the same in every process and every run
            model = timm.create_model(model_name, pretrained=pretrained, **build)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(unknown_model_message(model_name)) from None
        raise
    except TypeError as e:  # a build argument the model does not take
        raise ValueError(f"cannot build '{model_name}' with {build} ({e}); check --model-kwargs"
                         + (f" and the arguments recorded in '{recorded_from}'" if recorded_from else '') + '.') \
            from None
    build['num_classes'] = getattr(model, 'num_classes', build.get('num_classes'))
    if stored is not None:
        label = f"'{checkpoint}'"
        state_dict = select_state_dict(stored, use_ema=use_ema, source=label, ema_flag='--use-ema')
        del stored
        filter_fn = family_filter_fn(model)
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, model)
            except CheckpointMismatchError as e:
                raise CheckpointMismatchError(f'{label}: {e}') from None
        check_classifier(model, state_dict, label)
        load_state_dict_strict(model, state_dict, source=label)
        source = {'checkpoint': os.path.abspath(checkpoint), 'sha256': _sha256(checkpoint),
                  'weights': 'ema' if use_ema else 'non-ema'}
    elif pretrained:
        cfg = model.pretrained_cfg
        source = {'pretrained': f"{cfg.get('architecture', model_name)}.{cfg.get('tag', '')}".rstrip('.'),
                  'hf_hub_id': cfg.get('hf_hub_id'), 'url': cfg.get('url')}
    else:
        source = {'random_init': True}
    return EvalModel(model.eval(), source, build, size, recorded_from)


def _sha256(path: str) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


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
