"""Whether a ``--resume`` file can continue this run, decided before timm loads it.

timm's resume raises whatever ``torch.load`` or ``load_state_dict`` raise: forty lines of traceback for an empty file,
torch's own advice to retry with ``weights_only=False`` for a file that carries code, and a silent switch of method
when an RSPC checkpoint is resumed without ``--rspc``. Here each case is one :class:`ConfigError` saying whether the
file is damaged, unsafe or of another model, and what to do. Used by ``timm-rspc train`` and by timm's own train.py
under ``python -m timm_rspc.run_script``.
"""
from typing import Any, Dict

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import unwrap_model

from timm_rspc.models.checkpoint_loading import DamagedCheckpointError, UnsafeCheckpointError, read_checkpoint

from .args import METHOD_CHANGE_FLAG, ConfigError


def read_training_checkpoint(path: str, flag: str = '--resume') -> Dict[str, Any]:
    """The checkpoint at ``path``, read weights-only (tensors memory-mapped where the format allows)."""
    checkpoint = _read_weights_only(path, flag)
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        raise ConfigError(
            f"{flag} file '{path}' is not a training checkpoint (no 'state_dict' entry). To start from its weights, "
            "pass it as --initial-checkpoint instead.")
    return checkpoint


def _read_weights_only(path: str, flag: str) -> Any:
    """The file read by the package's one reader (`models.read_checkpoint`, weights-only, tensors memory-mapped),
    its errors worded for ``flag``."""
    try:
        return read_checkpoint(path, mmap=True)
    except UnsafeCheckpointError as e:
        raise ConfigError(
            f"{flag} file '{path}' is unsafe: it would run code ({', '.join(e.globals)}) when loaded, which no "
            "training checkpoint does, so it was not loaded. Use a checkpoint written by timm's train.py or timm-rspc "
            "train.") from None
    except DamagedCheckpointError as e:
        raise ConfigError(
            f"{flag} file '{path}' is damaged ({e.reason}). Resume from another checkpoint of the run "
            "(checkpoint-N.pth.tar) or start without it.") from None


def is_rspc_checkpoint(checkpoint: Dict[str, Any]) -> bool:
    """Written by an RSPC run: its arguments say ``rspc``, or (without arguments) its task state holds the
    corruption model."""
    args = checkpoint.get('args')
    if hasattr(args, 'rspc'):
        return bool(args.rspc)
    task_state = checkpoint.get('task_state')
    return isinstance(task_state, dict) and 'corruption_model' in task_state


def check_same_model(checkpoint: Dict[str, Any], model: nn.Module, path: str, flag: str = '--resume') -> None:
    """The checkpoint's weights have exactly the keys and shapes of ``model``."""
    saved = clean_state_dict(checkpoint['state_dict'])
    expected = unwrap_model(model).state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    found = []
    if reshaped:
        key = reshaped[0]
        found.append(f"{len(reshaped)} of other shape, e.g. {key} {tuple(saved[key].shape)} in the file, "
                     f"{tuple(expected[key].shape)} here")
    if missing:
        found.append(f'{len(missing)} missing, e.g. {missing[0]}')
    if unexpected:
        found.append(f'{len(unexpected)} unexpected, e.g. {unexpected[0]}')
    arch = checkpoint.get('arch')
    advice = ('Resume with the model flags it was trained with (args.yaml beside it), or start a new run from its '
              'weights with --initial-checkpoint.') if flag == '--resume' else (
              'Build the model it was trained with (--model, --num-classes, --model-kwargs), or load only the '
              'matching weights with --pretrained-path, which adapts the classifier.')
    raise ConfigError(
        f"{flag} file '{path}' is a checkpoint of another model{f' ({arch})' if arch else ''}: its weights do not "
        f"fit this one ({'; '.join(found)}). {advice}")


def check_same_method(checkpoint: Dict[str, Any], rspc: bool, allow_method_change: bool, path: str) -> None:
    """An RSPC checkpoint continues with ``--rspc`` and a plain one without, unless a change is asked for."""
    trained_with_rspc = is_rspc_checkpoint(checkpoint)
    if trained_with_rspc == bool(rspc) or allow_method_change:
        return
    if trained_with_rspc:
        raise ConfigError(
            f"--resume file '{path}' was trained with --rspc (it holds the corruption model): pass --rspc to "
            f"continue it, or {METHOD_CHANGE_FLAG} to continue it as plain training.")
    raise ConfigError(
        f"--resume file '{path}' was trained without --rspc: drop --rspc to continue it, or pass "
        f"{METHOD_CHANGE_FLAG} to continue it with RSPC (the corruption model then starts afresh).")


def check_same_optimizer(checkpoint: Dict[str, Any], opt: str, path: str) -> None:
    """The checkpoint's optimiser state is loaded into this run's optimiser: it must be the same optimiser.

    torch loads any optimiser's state into any other without complaint, then the first step fails on a missing
    hyperparameter (``KeyError: 'momentum'`` for an AdamW state in SGD). The optimiser's name is in the checkpoint's
    arguments (timm's train.py and this trainer store them); a file without them is not checked.
    """
    saved = getattr(checkpoint.get('args'), 'opt', None)
    if saved is None or str(saved).lower() == str(opt).lower():
        return
    raise ConfigError(
        f"--resume file '{path}' was trained with --opt {saved}, this run uses --opt {opt}: pass --opt {saved} to "
        f"continue it, or --no-resume-opt to continue its weights with a new {opt} optimiser.")


def check_epochs_left(checkpoint: Dict[str, Any], epochs: int, path: str) -> None:
    """A resume must have an epoch left to train: timm's loop would otherwise end at once, with an empty result and
    exit status 0, as if it had trained. The checkpoint's ``epoch`` is its last completed one (timm's version 2)."""
    done = checkpoint.get('epoch')
    if isinstance(done, int) and done + 1 >= epochs:
        raise ConfigError(
            f"--resume file '{path}' has finished epoch {done} of its run, and this run trains {epochs} epochs in "
            f"all: nothing is left to train. Pass --epochs {done + 2} or more to train on.")


def check_initial_checkpoint(path: str, model: nn.Module) -> None:
    """``--initial-checkpoint`` is loaded by timm's ``load_checkpoint`` (EMA weights first, as timm's train.py does);
    before that, the file is read weights-only and the weights timm would pick are checked against ``model``, so a
    damaged, unsafe or other model's file is one line instead of a traceback."""
    checkpoint = _read_weights_only(path, '--initial-checkpoint')
    weights = checkpoint
    if isinstance(checkpoint, dict):
        for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):  # timm's order with use_ema=True
            if isinstance(checkpoint.get(key), dict):
                weights = checkpoint[key]
                break
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"--initial-checkpoint file '{path}' holds no state dict of tensors; pass a checkpoint or "
                          "a saved state_dict().")
    meta = {'arch': checkpoint.get('arch')} if isinstance(checkpoint, dict) else {}
    check_same_model({'state_dict': weights, **meta}, model, path, flag='--initial-checkpoint')


def check_resume_file(path: str, model: nn.Module, rspc: bool, allow_method_change: bool = False) -> Dict[str, Any]:
    """Read ``path`` and check that it can resume training ``model`` (with RSPC when ``rspc``); returns it."""
    checkpoint = read_training_checkpoint(path)
    check_same_model(checkpoint, model, path)
    check_same_method(checkpoint, rspc, allow_method_change, path)
    return checkpoint

