"""timm's own ``train.py``, unmodified, with ``--rspc``: the RSPC pieces go in at the names the script looks up.

``python -m timm_rspc.run_script path/to/train.py --rspc ...`` runs the script's module body (imports, argument
parser) under a name other than ``__main__``, so that ``main()`` has not started yet, replaces a few names in the
script's own namespace, then calls ``main()``. Nothing in timm or in the file changes; the replacements are:

- ``parser`` (its main argument parser): gains the RSPC flags (:func:`~timm_rspc.method.add_rspc_args`, shown in
  ``--help``) and ``--allow-method-change``, and hands the parsed arguments to the injection;
- ``ClassificationTask``: with ``--rspc``, the RSPC task from :func:`~timm_rspc.method.create_rspc_task` (same call
  signature), else timm's class;
- ``NativeScaler``: records the AMP loss scaler, which the corruption model's optimiser unscales with;
- ``create_optimizer_v2``: once train.py has built the optimiser of the task's trainable module, attaches the
  corruption model's optimiser to it (``task.attach_optimizer``);
- ``resume_task_checkpoint``: checks the ``--resume`` file first (damaged, unsafe, another model, another method);
- ``train_one_epoch``: adds the epoch averages of the task's other scalars (``task_loss``, ``align_loss``,
  ``occluded_fraction``) to the metrics it returns, so ``summary.csv`` and ``--result`` carry them.

Checkpoints, resume of the corruption model (timm saves and restores the task's ``task_state``), EMA, compile and
DDP are timm's own task-based code paths. These names exist in the train.py of timm 1.0.27 and later; the train.py of
1.0.23 - 1.0.26 builds its optimiser, EMA and checkpoints around the bare model, so ``--rspc`` is refused there.
"""
import argparse
import gc
import os
import sys
import types
from typing import Any, Callable, Dict, Optional

import torch

from timm_rspc.method import add_rspc_args, create_rspc_task

from .args import ConfigError, add_method_change_arg
from .loop import ScalarSums
from .resume_check import check_resume_file, check_same_optimizer

SCRIPT_MODULE_NAME = '__timm_rspc_script__'
# Names of timm's train.py that --rspc replaces; all of them must exist.
TRAIN_SCRIPT_SEAMS = ('parser', 'ClassificationTask', 'create_optimizer_v2', 'resume_task_checkpoint',
                      'train_one_epoch', 'NativeScaler')


def load_script(path: str) -> Dict[str, Any]:
    """Run the module body of the script at ``path`` (not its ``__main__`` block) and return its namespace.

    The namespace is a module registered in ``sys.modules``, so what the script defines can be pickled (data-loader
    workers, multiprocessing) as when it runs as ``__main__``.
    """
    with open(path, 'rb') as f:
        code = compile(f.read(), path, 'exec')
    module = types.ModuleType(SCRIPT_MODULE_NAME)
    module.__file__ = path
    sys.modules[SCRIPT_MODULE_NAME] = module
    exec(code, module.__dict__)
    return module.__dict__


def is_train_script(namespace: Dict[str, Any]) -> bool:
    return isinstance(namespace.get('parser'), argparse.ArgumentParser) and 'ClassificationTask' in namespace


class RSPCInjection:
    """The RSPC pieces of one run of timm's train.py, and the replacements that put them in place."""

    def __init__(self, namespace: Dict[str, Any]):
        self.namespace = namespace
        self.missing_seams = [name for name in TRAIN_SCRIPT_SEAMS if name not in namespace]
        self.args: Optional[argparse.Namespace] = None
        self.task = None
        self.loss_scaler = None
        self.scalar_sums = ScalarSums()
        self._hook_handle = None

    def install(self) -> 'RSPCInjection':
        ns = self.namespace
        parser = ns['parser']
        if not any('--rspc' in action.option_strings for action in parser._actions):
            add_method_change_arg(add_rspc_args(parser))
        parse_args = parser.parse_args
        parser.parse_args = lambda *a, **kw: self._checked_args(parse_args(*a, **kw))
        for name, wrap in (('ClassificationTask', self._task_factory), ('NativeScaler', self._scaler_factory),
                           ('create_optimizer_v2', self._optimizer_factory),
                           ('resume_task_checkpoint', self._checked_resume), ('train_one_epoch', self._epoch)):
            if name in ns:
                ns[name] = wrap(ns[name])
        return self

    @property
    def rspc(self) -> bool:
        return bool(getattr(self.args, 'rspc', False))

    def _checked_args(self, args: argparse.Namespace) -> argparse.Namespace:
        self.args = args
        if not self.rspc:
            return args
        if self.missing_seams:
            raise ConfigError(
                f"this train.py has no {', '.join(self.missing_seams)} (timm before 1.0.27 builds its optimiser, EMA "
                "and checkpoints around the bare model), so --rspc cannot be added to it: use the train.py of timm "
                "1.0.27 or later, or timm-rspc train.")
        if getattr(args, 'kd_model_name', None):
            raise ConfigError('--rspc cannot be combined with distillation (--kd-model-name): choose one.')
        return args

    def _task_factory(self, classification_task: Callable) -> Callable:
        def create_task(model, criterion=None, device=None, dtype=None, verbose=True, **kwargs):
            if not self.rspc:
                return classification_task(
                    model=model, criterion=criterion, device=device, dtype=dtype, verbose=verbose, **kwargs)
            try:
                task = create_rspc_task(self.args, model, criterion, device=device, dtype=dtype, verbose=verbose)
            except (ValueError, TypeError, LookupError) as e:
                raise ConfigError(f"cannot set up the RSPC task for '{self.args.model}': {e}") from None
            self._hook_handle = task.register_forward_hook(self._record_scalars)
            task.prepare_distributed = _cpu_ddp_without_device_ids(task.prepare_distributed)
            self.task = task
            return task
        return create_task

    def _scaler_factory(self, native_scaler: Callable) -> Callable:
        def create_scaler(*args, **kwargs):
            self.loss_scaler = native_scaler(*args, **kwargs)
            return self.loss_scaler
        return create_scaler

    def _optimizer_factory(self, create_optimizer_v2: Callable) -> Callable:
        def create_optimizer(model_or_params, *args, **kwargs):
            optimizer = create_optimizer_v2(model_or_params, *args, **kwargs)
            if self.task is not None and model_or_params is self.task.get_trainable_module():
                self.task.attach_optimizer(optimizer, self.loss_scaler)
            return optimizer
        return create_optimizer

    def _checked_resume(self, resume_task_checkpoint: Callable) -> Callable:
        def resume(task, checkpoint_path, *args, **kwargs):
            if os.path.isfile(checkpoint_path):
                checkpoint = check_resume_file(checkpoint_path, task.get_eval_model(), self.rspc,
                                               getattr(self.args, 'allow_method_change', False))
                if kwargs.get('optimizer') is not None and getattr(self.args, 'opt', None):  # not --no-resume-opt
                    check_same_optimizer(checkpoint, self.args.opt, checkpoint_path)
            return resume_task_checkpoint(task, checkpoint_path, *args, **kwargs)
        return resume

    def release(self) -> None:
        """Let go of the run's task once ``main()`` has returned.

        The wrapped names in the script's namespace keep this object alive until the interpreter exits, and the task
        (its DDP module, its process group's work) must not live that long: freed during interpreter shutdown, gloo's
        threads abort the process. So the task is dropped here and collected while everything still works, as
        train.py's own locals are when its ``main()`` returns.
        """
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        if self.task is not None:
            self.task.__dict__.pop('prepare_distributed', None)
        self.task = self.loss_scaler = None
        self.scalar_sums = ScalarSums()
        gc.collect()

    def _record_scalars(self, task, inputs, result) -> None:
        self.scalar_sums.add(result, inputs[0].shape[0])

    def _epoch(self, train_one_epoch: Callable) -> Callable:
        def train_epoch(*args, **kwargs):
            self.scalar_sums = ScalarSums()
            metrics = train_one_epoch(*args, **kwargs)
            if self.task is not None:
                averages = self.scalar_sums.averages(distributed=bool(getattr(self.args, 'distributed', False)))
                metrics.update((k, v) for k, v in averages.items() if k not in metrics)
            return metrics
        return train_epoch


def _cpu_ddp_without_device_ids(prepare_distributed: Callable) -> Callable:
    """train.py passes ``device_ids=[device]`` to DDP even on CPU, which DDP refuses (it takes no ids for CPU
    modules); without ids the same call works, so torchrun runs on CPU (gloo) as on GPUs."""
    def prepare(device_ids=None, **ddp_kwargs):
        if device_ids and all(torch.device(d).type == 'cpu' for d in device_ids):
            device_ids = None
        return prepare_distributed(device_ids=device_ids, **ddp_kwargs)
    return prepare


def run_train_script(namespace: Dict[str, Any]) -> RSPCInjection:
    """Install the RSPC injection into a loaded train.py namespace and run its ``main()``."""
    injection = RSPCInjection(namespace).install()
    try:
        namespace['main']()
    finally:
        injection.release()
    return injection


def script_argv(script: str, argv) -> None:
    """``sys.argv`` and ``sys.path`` as ``python SCRIPT ARGS`` sets them."""
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
