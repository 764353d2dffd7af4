"""Building a model the way it was trained, and loading a checkpoint's weights into it: one implementation for every
command that builds a model from a file (`bench`, `analyze`, `convert`, `export`, `push`).

A ``timm-rspc train`` or timm ``train.py`` checkpoint stores the run's arguments (``args``), and both write an
``args.yaml`` beside their checkpoints. The build arguments found there (``model_kwargs``, ``num_classes``,
``in_chans``, ``gp``) are the defaults when the recorded model has the same architecture; explicit arguments win. The
run's input size (``img_size`` / ``input_size``) is a data-config value, not a build argument (timm's train.py never
passes it to ``create_model``): it is returned apart, for the caller's data config. Weights load strictly, after the
family's ``checkpoint_filter_fn``, with a head of another size reported as such.
"""
import argparse
import difflib
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .checkpoint_loading import (
    CheckpointMismatchError, check_classifier, family_filter_fn, load_state_dict_strict, select_state_dict,
)

__all__ = [
    'HUB_MODEL_PREFIXES', 'unknown_model_message', 'check_model_name', 'recorded_training_args', 'same_architecture',
    'build_arguments', 'create_model', 'load_weights',
]

HUB_MODEL_PREFIXES = ('hf-hub:', 'hf_hub:', 'timm/', 'local-dir:')


def unknown_model_message(name: str) -> str:
    """'unknown model ...' with the closest timm names."""
    import timm
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " List the names with timm.list_models('*pattern*')."
    return f"unknown model '{name}'.{hint}"


def check_model_name(name: str) -> None:
    """ValueError with `unknown_model_message` unless ``name`` is registered with timm (or a Hub / local-dir name)."""
    import timm
    if not name.startswith(HUB_MODEL_PREFIXES) and not timm.is_model(name):
        raise ValueError(unknown_model_message(name))


def _as_dict(args: Any) -> Dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, dict) else {}


def recorded_training_args(checkpoint_path: str, checkpoint: Any = None) -> Tuple[Dict[str, Any], Optional[str]]:
    """The training arguments stored in the checkpoint (``args``), else those of an ``args.yaml`` beside it, and
    where they were read (None when there are none)."""
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
                raise ValueError(f"'{yaml_path}' (the training arguments beside the checkpoint) is not valid YAML: "
                                 f"{str(e).splitlines()[0]}") from None
        if isinstance(args, dict):
            return args, yaml_path
    return {}, None


def same_architecture(name: str, other: Any) -> bool:
    """Whether ``other`` (a recorded model name) is ``name``'s architecture; True when nothing is recorded."""
    from timm.models import get_arch_name
    return not isinstance(other, str) or get_arch_name(name) == get_arch_name(other)


def _int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def build_arguments(args: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(``create_model`` keyword arguments, input size) of a training run's arguments.

    timm's train.py / ``timm-rspc train``: ``model_kwargs``, ``num_classes``, ``in_chans``, ``gp``, ``img_size``,
    ``input_size`` (C, H, W). DeiT-style scripts (the authors' RVT / FAN releases) record ``input_size`` as one int.
    The size comes back as ``{'input_size': [C, H, W]}`` or ``{'img_size': N}`` (timm's data-config keys), or {}.
    """
    build = dict(args['model_kwargs']) if isinstance(args.get('model_kwargs'), dict) else {}
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


def create_model(model_name: str, pretrained: bool = False, recorded_from: Optional[str] = None,
                 **build: Any) -> nn.Module:
    """``timm.create_model`` with the package's models registered and the same random initialisation in every process
    and run; an unknown name or a build argument the model does not take is one ValueError."""
    import timm  # this package's models are registered: importing timm_rspc.models did it
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(model_name, pretrained=pretrained, **build)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(unknown_model_message(model_name)) from None
        raise
    except TypeError as e:  # a build argument the model does not take
        raise ValueError(f"cannot build '{model_name}' with {build} ({e}); check --model-kwargs"
                         + (f" and the arguments recorded in '{recorded_from}'" if recorded_from else '') + '.') \
            from None


def load_weights(model: nn.Module, checkpoint: Any, label: str, use_ema: bool = False,
                 ema_flag: Optional[str] = None) -> nn.Module:
    """Load a read checkpoint's (EMA or non-EMA) weights into ``model`` strictly, through the family's filter;
    ``label`` names the file in errors, ``ema_flag`` is the command's EMA flag."""
    state_dict = select_state_dict(checkpoint, use_ema=use_ema, source=label, ema_flag=ema_flag)
    filter_fn = family_filter_fn(model)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f'{label}: {e}') from None
    check_classifier(model, state_dict, label)  # a head of another size: the file and both shapes, not a key list
    load_state_dict_strict(model, state_dict, source=label)
    return model
