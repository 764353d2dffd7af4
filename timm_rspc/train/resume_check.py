"""Whether a ``--resume`` file can continue this run, decided before timm loads it.

timm's resume raises whatever ``torch.load`` or ``load_state_dict`` raise: forty lines of traceback for an empty file,
torch's own advice to retry with ``weights_only=False`` for a file that carries code, and a silent switch of method
when an RSPC checkpoint is resumed without ``--rspc``. Here each case is one :class:`ConfigError` saying whether the
file is damaged, unsafe or of another model, and what to do. Used by ``timm-rspc train`` and by timm's own train.py
under ``python -m timm_rspc.run_script``.
"""
import argparse
import io
import os
import pickle
import pickletools
import zipfile
from typing import Any, Dict, List

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import unwrap_model

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
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{flag} file '{path}' is damaged: it is empty (0 bytes), e.g. an interrupted copy. "
                          "Resume from another checkpoint of the run (checkpoint-N.pth.tar) or start without it.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        found = _disallowed_globals(path)
        if not found:
            raise _damaged(path, flag, e) from None
        what = ', '.join(found)
        raise ConfigError(
            f"{flag} file '{path}' is unsafe: it would run code ({what}) when loaded, which no training checkpoint "
            "does, so it was not loaded. Use a checkpoint written by timm's train.py or timm-rspc train.") from None
    except Exception as e:  # torch raises OSError, EOFError, RuntimeError, IndexError ... for damaged files
        raise _damaged(path, flag, e) from None
    return checkpoint


def _disallowed_globals(path: str) -> List[str]:
    """The Python objects (``module.name``) the file's pickle would import and torch's weights-only loader does not
    allow, read with ``pickletools`` without executing anything; empty when the pickle cannot even be parsed."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = set(_get_allowed_globals()) | {'argparse.Namespace'}
    found, strings = [], []
    try:
        with _open_pickle(path) as f:
            while True:  # a legacy torch file holds several pickles in a row
                if not f.peek(1)[:1]:
                    break
                for opcode, arg, _ in pickletools.genops(f):
                    if opcode.name == 'GLOBAL':
                        found.append(arg.replace(' ', '.'))
                    elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                        found.append('.'.join(strings[-2:]))
                    elif isinstance(arg, str):
                        strings.append(arg)
                if zipfile.is_zipfile(path):
                    break
    except Exception:  # not parseable as a pickle: damaged, not unsafe
        return []
    return sorted(set(name for name in found if name not in allowed))


def _open_pickle(path: str):
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
        return io.BufferedReader(archive.open(name))
    return open(path, 'rb')


def _damaged(path: str, flag: str, error: BaseException) -> ConfigError:
    # torch's messages run to several sentences (and may suggest unsafe loading): keep the first one.
    reason = str(error).split('. ')[0].splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(
        f"{flag} file '{path}' is damaged (truncated or not a PyTorch file: {reason}). Resume from another "
        "checkpoint of the run (checkpoint-N.pth.tar) or start without it.")


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

