"""What this package needs from timm that older timm releases lack: one place, at the bottom layer.

Each name is timm's own where the installed timm has it; otherwise a small local fallback, whose docstring says which
timm release brings the original. Nothing here imports the rest of the package.

`require_timm(version, feature)` is how a part that needs a newer timm than the models says so: one line naming the
part, the timm it needs and the installed one. Parts raise it when used, not when imported; only ``import timm_rspc``
itself raises it on import, below `MODELS_MIN_VERSION` (the package's declared lower bound).
"""
import re
from typing import Optional

import timm

__all__ = [
    'TIMM_VERSION', 'MODELS_MIN_VERSION', 'TASK_MIN_VERSION', 'TRAINER_MIN_VERSION', 'EXPORT_MIN_VERSION',
    'TimmVersionError',
    'timm_version_at_least', 'require_timm', 'timm_task_classes', 'missing_from_timm', 'get_device_dtype',
    'resolve_classification_loss', 'get_model_input_config',
]

# The oldest timm each part runs on (README "Supported timm versions"; tests/test_timm_window.py runs the oldest).
MODELS_MIN_VERSION = '1.0.21'   # timm's Mlp / XCiT / ConvNeXt building blocks take device= and dtype=
TASK_MIN_VERSION = '1.0.23'     # timm.task: RSPCTask, create_rspc_task (run_script's train.py --rspc: 1.0.27)
TRAINER_MIN_VERSION = '1.0.31'  # timm-rspc train: timm's loss factory, evaluation_sample_limit, trim_summary
EXPORT_MIN_VERSION = '1.0.31'   # timm-rspc export: save_for_hf records model_args in config.json


def _parse(version: str) -> tuple:
    """'1.0.29.dev0' -> (1, 0, 29): a pre-release or dev build counts as its release."""
    match = re.match(r'(\d+)(?:\.(\d+))?(?:\.(\d+))?', version)
    return tuple(int(part or 0) for part in match.groups()) if match else (0, 0, 0)


TIMM_VERSION = timm.__version__


def timm_version_at_least(version: str) -> bool:
    """Whether the installed timm is ``version`` or newer (a ``.devN`` build counts as its release)."""
    return _parse(TIMM_VERSION) >= _parse(version)


class TimmVersionError(ImportError):
    """A part of timm-rspc was used with a timm older than the one it needs (message: one line, both versions)."""


def require_timm(version: str, feature: str, cause: Optional[BaseException] = None) -> None:
    """Raise `TimmVersionError` (one line naming ``feature``, the timm it needs and the installed one) if too old."""
    if timm_version_at_least(version) and cause is None:
        return
    error = TimmVersionError(
        f'{feature} needs timm>={version}; the installed timm is {TIMM_VERSION} '
        f'(pip install "timm>={version}")')
    if cause is not None:
        raise error from cause
    raise error


try:
    from timm.layers import get_device_dtype
except ImportError:  # timm < 1.0.29
    def get_device_dtype(module, device=None, dtype=None):
        """Factory ``device`` / ``dtype`` kwargs resolved from a parent module's first parameter.

        Local copy of ``timm.layers.get_device_dtype`` (timm 1.0.29 brings the original): explicit values win,
        missing ones come from the module's first parameter, if it has one.
        """
        parameter = next(module.parameters(), None)
        if parameter is not None:
            if device is None:
                device = parameter.device
            if dtype is None:
                dtype = parameter.dtype
        return {'device': device, 'dtype': dtype}


# --- timm.task (1.0.23+) and the helpers around it -----------------------------------------------------------------
# Imported by the modules that use them, never by `import timm_rspc` (which imports neither timm.task nor timm.loss).

def timm_task_classes() -> tuple:
    """``(ClassificationTask, TrainingTask)`` of ``timm.task`` (timm 1.0.23 brings it), or stand-ins without it.

    The stand-ins let the modules that define tasks be imported with an older timm (what they define besides the
    tasks keeps working); constructing a task then raises `TimmVersionError`, one line naming the task and timm 1.0.23.
    """
    try:
        from timm.task import ClassificationTask, TrainingTask
        return ClassificationTask, TrainingTask
    except ImportError as e:
        cause = e
    import torch.nn as nn

    class TrainingTask(nn.Module):
        """Stand-in for ``timm.task.TrainingTask`` (timm 1.0.23 brings it): constructing a task raises."""

        def __init__(self, *args, **kwargs):
            require_timm(TASK_MIN_VERSION, f'{type(self).__name__} (a timm.task task)', cause=cause)

    class ClassificationTask(TrainingTask):
        """Stand-in for ``timm.task.ClassificationTask`` (timm 1.0.23 brings it): constructing it raises."""

    return ClassificationTask, TrainingTask


def missing_from_timm(name: str, version: str, feature: str, cause: BaseException):
    """A stand-in for timm's ``name``, which timm ``version`` brings: calling it raises `TimmVersionError` for
    ``feature`` (so a module that imports ``name`` loads with an older timm, and ``feature`` fails when it runs)."""

    def missing(*args, **kwargs):
        require_timm(version, feature, cause=cause)

    missing.__name__ = missing.__qualname__ = name
    missing.__doc__ = f"Stand-in for timm's {name} (timm {version} brings it): raises TimmVersionError."
    return missing


def resolve_classification_loss(criterion, device, multi_label: bool = False, criterion_kwargs=None):
    """An explicit criterion moved to ``device``, or one created from ``criterion_kwargs``.

    timm's ``timm.task.classification.resolve_classification_loss`` where it exists (timm 1.0.31 brings it, with
    ``timm.loss.create_classification_loss``). The local fallback covers what older timm can do without timm's loss
    factory: an explicit criterion, or softmax cross-entropy (BCE for ``multi_label``) when none is given;
    ``criterion_kwargs`` need timm 1.0.31.
    """
    try:
        from timm.task.classification import resolve_classification_loss as timm_resolve
    except ImportError:
        timm_resolve = None
    if timm_resolve is not None:
        return timm_resolve(criterion, device, multi_label=multi_label, criterion_kwargs=criterion_kwargs)
    import torch.nn as nn
    if criterion is None:
        if criterion_kwargs:
            require_timm('1.0.31', f'criterion_kwargs ({", ".join(sorted(criterion_kwargs))}) without a criterion',
                         cause=ImportError('timm.loss.create_classification_loss'))
        criterion = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()
    elif criterion_kwargs:
        raise ValueError(
            f'Pass either an explicit criterion or criterion_kwargs, not both: {sorted(criterion_kwargs)}')
    if isinstance(criterion, nn.Module):
        criterion = criterion.to(device=device)
    return criterion


def get_model_input_config(model) -> dict:
    """The model's current input ``(channels, height, width)`` (``input_size``), ``fixed_input_size``, ``first_conv``.

    timm's ``timm.models._input.get_model_input_config`` where it exists (timm 1.0.31 brings it, reading the traits
    timm 1.0.31's builder records). The local fallback reads the same from the model itself: its pretrained cfg, its
    ``in_chans`` and its patch embedding's ``img_size`` (set by ``create_model(..., img_size=...)``).
    """
    try:
        from timm.models._input import get_model_input_config as timm_input_config
    except ImportError:
        timm_input_config = None
    if timm_input_config is not None:
        return timm_input_config(model)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    source_size = cfg.get('input_size', (3, 224, 224))
    size = getattr(getattr(model, 'patch_embed', None), 'img_size', None) or source_size[-2:]
    return dict(
        input_size=(getattr(model, 'in_chans', source_size[0]), *size),
        fixed_input_size=cfg.get('fixed_input_size', False),
        first_conv=cfg.get('first_conv'),
    )
