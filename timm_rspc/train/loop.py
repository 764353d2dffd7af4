"""One training epoch and one evaluation pass, driven by a ``timm.task`` task.

The task computes the loss (plain classification, or RSPC's ``task + lambda * align``); this loop does what is the
same for every task: gradient accumulation, AMP loss scaling, clipping, EMA, per-update LR schedule, progress lines,
and metrics averaged over the epoch and over the processes. Scalars stay on the device during the epoch and are
read back only on log lines, so a training step never waits for the device.
"""
import logging
from collections import OrderedDict
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad

from .._timm_compat import TRAINER_MIN_VERSION, missing_from_timm

try:
    from timm.task import evaluation_sample_limit
except ImportError as e:  # timm < 1.0.31: `timm-rspc train` says which timm it needs when it runs
    evaluation_sample_limit = missing_from_timm('evaluation_sample_limit', TRAINER_MIN_VERSION, 'timm-rspc train', e)

from .progress import ProgressLog

_logger = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    """What the loop needs to know about the run, resolved once from the command line."""
    device: torch.device
    amp_autocast: Callable = suppress
    loss_scaler: Optional[object] = None
    model_dtype: Optional[torch.dtype] = None
    mixup_fn: Optional[Callable] = None
    prefetcher: bool = True
    channels_last: bool = False
    grad_accum_steps: int = 1
    clip_grad: Optional[float] = None
    clip_mode: str = 'norm'
    log_interval: int = 50
    tta: int = 0
    distributed: bool = False
    world_size: int = 1
    is_primary: bool = True
    synchronize_step: bool = False


class ScalarSums:
    """Batch-size weighted sums of a task's scalar outputs (``loss``, ``align_loss``, ...), kept on the device."""

    def __init__(self):
        self.names = []
        self.sums = None
        self.count = 0
        self.last = None

    def add(self, result: Dict[str, torch.Tensor], batch_size: int) -> None:
        scalars = [(k, v) for k, v in result.items() if torch.is_tensor(v) and v.ndim == 0]
        values = torch.stack([v.detach().float() for _, v in scalars])
        if self.sums is None:
            self.names = [k for k, _ in scalars]
            self.sums = torch.zeros_like(values, dtype=torch.float64)
        self.sums += values.double() * batch_size
        self.count += batch_size
        self.last = values

    def averages(self, distributed: bool = False) -> 'OrderedDict[str, float]':
        """Averages over everything added so far (over all processes when ``distributed``: a collective)."""
        if self.sums is None:
            return OrderedDict()
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count])])
        if distributed:
            dist.all_reduce(totals)
        totals = totals.tolist()
        count = max(totals[-1], 1)
        return OrderedDict((name, total / count) for name, total in zip(self.names, totals[:-1]))

    def latest(self, distributed: bool = False, world_size: int = 1) -> 'OrderedDict[str, float]':
        values = self.last.clone()
        if distributed:
            dist.all_reduce(values)
            values /= world_size
        return OrderedDict(zip(self.names, values.tolist()))


def _to_device(input, target, settings: LoopSettings, training: bool = True):
    """Move a batch to the device (unless timm's prefetcher did) and apply mixup / cutmix to training batches."""
    if not settings.prefetcher:
        input = input.to(device=settings.device, dtype=settings.model_dtype)
        target = target.to(device=settings.device)
        if training and settings.mixup_fn is not None:
            input, target = settings.mixup_fn(input, target)
    if settings.channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    return input, target


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_one_epoch(
        epoch: int,
        task,
        loader,
        optimizer: torch.optim.Optimizer,
        settings: LoopSettings,
        num_epochs: int,
        lr_scheduler=None,
        on_update: Optional[Callable[[int, int], None]] = None,
) -> 'OrderedDict[str, float]':
    """Train ``task`` for one pass over ``loader``; returns the epoch's averages of the task's scalar outputs.

    ``on_update(epoch, update_idx)`` runs after every optimiser update (recovery checkpoints).
    """
    trainable_module = task.get_trainable_module()
    trainable_module.train()
    second_order = getattr(optimizer, 'is_second_order', False)
    accum = max(1, settings.grad_accum_steps)
    num_batches = len(loader)
    updates_per_epoch = (num_batches + accum - 1) // accum
    # The last accumulation group may be short; its losses are divided by its own size.
    last_group_size = num_batches % accum or accum
    last_group_start = num_batches - last_group_size
    num_updates = epoch * updates_per_epoch

    sums = ScalarSums()
    progress = ProgressLog(
        'Train', epoch, updates_per_epoch, num_epochs, settings.is_primary, settings.log_interval)
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        is_last = batch_idx == num_batches - 1
        need_update = is_last or (batch_idx + 1) % accum == 0
        group_size = last_group_size if batch_idx >= last_group_start else accum
        input, target = _to_device(input, target, settings)
        batch_size = input.shape[0]

        sync_ctx = task.no_sync() if settings.distributed and not need_update else nullcontext()
        with sync_ctx:
            with settings.amp_autocast():
                result = task(input, target)
            loss = result['loss'] / group_size if group_size > 1 else result['loss']
            _backward(loss, task, optimizer, settings, need_update, second_order)
        sums.add(result, batch_size)
        progress.count_samples(batch_size * settings.world_size)
        if not need_update:
            continue

        num_updates += 1
        update_idx = batch_idx // accum
        optimizer.zero_grad()
        task.update_ema(step=num_updates)
        if settings.synchronize_step:
            _synchronize(settings.device)
        if progress.should_log(update_idx, is_last):
            latest = sums.latest(settings.distributed, settings.world_size)
            averages = sums.averages(settings.distributed)
            progress.log(update_idx, latest, averages, _mean_lr(optimizer))
        if on_update is not None:
            on_update(epoch, update_idx)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)

    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    return sums.averages(settings.distributed)


def _backward(loss, task, optimizer, settings: LoopSettings, need_update: bool, second_order: bool) -> None:
    clip_parameters = None
    if settings.clip_grad is not None:
        clip_parameters = task.get_clip_parameters(exclude_head='agc' in settings.clip_mode)
    if settings.loss_scaler is not None:
        settings.loss_scaler(
            loss, optimizer, clip_grad=settings.clip_grad, clip_mode=settings.clip_mode,
            parameters=clip_parameters, create_graph=second_order, need_update=need_update)
        return
    loss.backward(create_graph=second_order)
    if need_update:
        if settings.clip_grad is not None:
            dispatch_clip_grad(clip_parameters, value=settings.clip_grad, mode=settings.clip_mode)
        optimizer.step()


def _mean_lr(optimizer: torch.optim.Optimizer) -> float:
    lrs = [group['lr'] for group in optimizer.param_groups]
    return sum(lrs) / len(lrs)


def validate(
        model,
        loader,
        task,
        settings: LoopSettings,
        log_suffix: str = '',
) -> 'OrderedDict[str, float]':
    """Loss / top-1 / top-5 of ``model`` on ``loader``, exact over all processes (sampler padding excluded)."""
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(loader))
    model.eval()
    num_batches = len(loader)
    progress = ProgressLog('Test' + log_suffix, None, num_batches, None, settings.is_primary, settings.log_interval)
    with torch.inference_mode():
        for batch_idx, (input, target) in enumerate(loader):
            input, target = _to_device(input, target, settings, training=False)
            with settings.amp_autocast():
                output = model(input)
            if isinstance(output, (tuple, list)):
                output = output[0]
            if settings.tta > 1:
                output = output.unfold(0, settings.tta, settings.tta).mean(dim=2)
                target = target[0:target.size(0):settings.tta]
            evaluator.update(output, target)
            progress.count_samples(input.shape[0] * settings.world_size)
            if progress.should_log(batch_idx, batch_idx == num_batches - 1):
                progress.log(batch_idx, None, evaluator.summary(), None)
    return evaluator.compute(distributed=settings.distributed)
