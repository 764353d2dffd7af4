"""The training run: timm's library pieces put together the way timm's ``train.py`` does, with the RSPC task.

Order matters and follows one rule: everything that can fail because of the command line fails before the first
batch is read (pre-flight checks, the model, the task's block search, the output folder), and everything that
changes state on disk happens after.
"""
import argparse
import gc
import json
import logging
import os
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.layers import convert_sync_batchnorm, set_fast_norm
from timm.models import create_model, load_checkpoint, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import PlateauLRScheduler, create_scheduler_v2, scheduler_kwargs
from timm.utils import NativeScaler

from .._timm_compat import TRAINER_MIN_VERSION, missing_from_timm

try:
    from timm.loss import create_classification_loss
    from timm.task import load_task_ema_checkpoint, resume_task_checkpoint
    from timm.utils.summary import trim_summary
except ImportError as e:  # timm < 1.0.31: the module loads, `timm-rspc train` says which timm it needs when it runs
    create_classification_loss, load_task_ema_checkpoint, resume_task_checkpoint, trim_summary = (
        missing_from_timm(name, TRAINER_MIN_VERSION, 'timm-rspc train', e) for name in (
            'create_classification_loss', 'load_task_ema_checkpoint', 'resume_task_checkpoint', 'trim_summary'))

from timm_rspc.method import create_rspc_task

from .args import ConfigError, args_to_yaml
from .loop import LoopSettings, train_one_epoch, validate
from .output import (
    CHECKPOINT_EXTENSION, AtomicCheckpointSaver, append_summary_row, atomic_write_text, claim_output_dir, holds_run,
    resumes_in_place,
)
from .preflight import run_preflight
from .resume_check import check_epochs_left, check_initial_checkpoint, check_resume_file, check_same_optimizer
from .rng import gather_rng_states, restore_rank_rng_state

_logger = logging.getLogger('timm_rspc.train')


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""
    output_dir: Optional[str]
    task: Optional[Any] = None  # the trained task; task.get_eval_model() is the trained model
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    epochs: List[Dict[str, Any]] = field(default_factory=list)
    checkpoint_epoch: Optional[int] = None  # the epoch of the last checkpoint this run wrote (last.pth.tar)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; the message says what was saved and the flag that continues it.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C keeps stopping; the command line exits with status 130 (the
    shell's code for SIGINT), so ``train && bench`` does not carry on with an unfinished run.
    """


NOTHING_SAVED = 'interrupted before training started: nothing was saved'


def train(args: argparse.Namespace) -> TrainResult:
    """Run training as described by ``args`` (from :func:`timm_rspc.train.parse_args`); Ctrl-C raises
    :class:`TrainingInterrupted`."""
    args_text = args_to_yaml(args)  # the recipe as given, before run-time values (lr, device, ranks) are filled in
    try:
        return _set_up_and_train(args, args_text)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:  # before the run folder was claimed
        raise TrainingInterrupted(NOTHING_SAVED) from None


def _set_up_and_train(args: argparse.Namespace, args_text: str) -> TrainResult:
    run_preflight(args)
    _normalise_args(args)
    device = utils.init_distributed_device(args)
    result = None
    try:
        result = _train(args, device, args_text)
        return result
    finally:
        if args.distributed and dist.is_initialized():
            _release_distributed(result)
            dist.destroy_process_group()


def _release_distributed(result: Optional[TrainResult]) -> None:
    """Unwrap the returned task's DDP module and collect it while the process group still exists.

    A caller that keeps the result until the interpreter exits would otherwise free DDP (and its gloo work) during
    interpreter shutdown, where gloo's threads abort the process ('terminate called without an active exception').
    """
    task = result.task if result is not None else None
    if task is not None and isinstance(getattr(task, 'trainable_module', None), nn.parallel.DistributedDataParallel):
        task.trainable_module = task.trainable_module.module
    gc.collect()


def _normalise_args(args: argparse.Namespace) -> None:
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    if args.drop_connect is not None and args.drop_path is None:
        args.drop_path = args.drop_connect
    model_img_size = args.model_kwargs.get('img_size')
    if isinstance(model_img_size, int) and args.img_size is None and args.input_size is None:
        # A model built for another size (--model-kwargs img_size=N) is fed images of that size.
        args.img_size = model_img_size


def _train(args: argparse.Namespace, device: torch.device, args_text: str) -> TrainResult:
    is_primary = utils.is_primary(args)
    if args.distributed:
        _logger.info(f'Process {args.rank} of {args.world_size}, device {args.device}.')
    elif is_primary:
        _logger.info(f'Training with one process on {args.device}.')
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.fast_norm:
        set_fast_norm()
    utils.random_seed(args.seed, args.rank)

    model_dtype = getattr(torch, args.model_dtype) if args.model_dtype else None
    model = _create_model(args)
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary)
    model.to(device=device, dtype=model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''  # synchronised BN makes the per-epoch BN sharing pointless
        model = convert_sync_batchnorm(model)

    amp_autocast, loss_scaler = suppress, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if device.type == 'cuda' and amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)

    mixup_args = _mixup_args(args)
    try:
        task = create_rspc_task(
            args, model, _train_criterion(args, mixup_args is not None).to(device),
            device=device, dtype=model_dtype, verbose=is_primary)
    except (ValueError, TypeError, LookupError) as e:
        raise ConfigError(f"cannot set up the {'RSPC' if args.rspc else 'training'} task for '{args.model}': {e}")
    resume_state = {}
    if args.resume:
        resume_state = check_resume_file(args.resume, task.get_eval_model(), args.rspc, args.allow_method_change)
        if not args.no_resume_opt:
            check_same_optimizer(resume_state, args.opt, args.resume)
        if args.start_epoch is None:
            check_epochs_left(resume_state, args.epochs + (getattr(args, 'cooldown_epochs', 0) or 0), args.resume)

    run_folder = None

    def claim_folder() -> str:
        nonlocal run_folder
        run_folder = claim_output_dir(args, data_config['input_size'][-1])
        return run_folder.path

    output_dir = _agree_on_primary(args, claim_folder)
    setup = _RunSetup(device, model_dtype, task, data_config, amp_autocast, loss_scaler, mixup_args, resume_state)
    result = TrainResult(output_dir=output_dir if is_primary else None, task=task)
    try:
        return _train_in_folder(args, setup, output_dir, args_text, result)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted_message(args, output_dir, result)) from None
    finally:
        if run_folder is not None:
            run_folder.release(remove_if_unused=True)


@dataclass
class _RunSetup:
    """What a run is built from, settled before its folder is claimed."""
    device: torch.device
    model_dtype: Optional[torch.dtype]
    task: Any
    data_config: Dict[str, Any]
    amp_autocast: Any
    loss_scaler: Any
    mixup_args: Optional[Dict[str, Any]]
    resume_state: Dict[str, Any]


def _interrupted_message(args: argparse.Namespace, output_dir: str, result: TrainResult) -> str:
    """What an interrupted run leaves, and the flag that goes on from there."""
    last = os.path.join(output_dir, 'last' + CHECKPOINT_EXTENSION)
    if result.checkpoint_epoch is not None:
        return (f'interrupted; epoch {result.checkpoint_epoch} (the last completed) is saved in {last}: continue '
                f'with --resume {last}')
    if args.resume:
        return f'interrupted before this run saved a checkpoint; continue with --resume {args.resume} again'
    if holds_run(output_dir):
        return (f"interrupted before the first checkpoint: nothing to resume was saved; start again into "
                f"'{output_dir}' with --output-exists overwrite")
    return NOTHING_SAVED


def _train_in_folder(args: argparse.Namespace, setup: _RunSetup, output_dir: str, args_text: str,
                     result: TrainResult) -> TrainResult:
    """Everything after the run folder is claimed: data, optimiser, resume, the epochs; fills in ``result``."""
    is_primary = utils.is_primary(args)
    device, model_dtype, task, loss_scaler = setup.device, setup.model_dtype, setup.task, setup.loss_scaler
    resume_state = setup.resume_state

    loader_train, loader_eval, mixup_fn = _create_loaders(
        args, setup.data_config, device, model_dtype, setup.mixup_args)
    _resolve_lr(args, is_primary)

    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    task.attach_optimizer(optimizer, loss_scaler=loss_scaler)  # RSPC: C's optimiser steps with this one

    resume_epoch = None
    if args.resume:
        resume_epoch = resume_task_checkpoint(
            task, args.resume,
            optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else loss_scaler,
            log_info=is_primary)
    if args.model_ema:
        task.setup_ema(
            decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
            device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        if task.has_ema():
            task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type != 'cpu' else None,
                                 broadcast_buffers=not args.no_ddp_bb)

    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    decreasing = eval_metric == 'loss'
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing), updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
        if args.resume and args.start_epoch is None:
            _continue_schedule(lr_scheduler, resume_state, start_epoch, is_primary)

    saver = None
    rng_states: List = []
    if is_primary:
        saver = AtomicCheckpointSaver(
            model=task.get_trainable_module(), optimizer=optimizer, args=args, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing,
            max_history=args.checkpoint_hist, task=task,
            extra_state=lambda: {
                'rng_state': rng_states,
                'lr_scheduler': _scheduler_state(lr_scheduler),
            })
        _write_args(output_dir, args_text, args.resume, start_epoch)
        continues = resumes_in_place(args.resume, output_dir)
        if continues:
            saver.load_state_dict_from_checkpoint(args.resume)
        trim_summary(os.path.join(output_dir, 'summary.csv'), start_epoch)
        resuming = ''
        if args.resume:
            resuming = f' (resuming {args.resume} at epoch {start_epoch}, ' + (
                'its own run folder)' if continues else "a new run folder: the checkpoint's folder is not written)")
        _logger.info(f'Output folder: {output_dir}{resuming}. Scheduled epochs: {num_epochs}, '
                     f'{updates_per_epoch} updates each.')
    if args.resume and args.start_epoch is None:
        restore_rank_rng_state(resume_state.get('rng_state'), args.rank, args.world_size)

    settings = LoopSettings(
        device=device, amp_autocast=setup.amp_autocast, loss_scaler=loss_scaler, model_dtype=model_dtype,
        mixup_fn=mixup_fn, prefetcher=args.prefetcher, channels_last=args.channels_last,
        grad_accum_steps=args.grad_accum_steps, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
        log_interval=args.log_interval, tta=args.tta, distributed=args.distributed, world_size=args.world_size,
        is_primary=is_primary, synchronize_step=args.synchronize_step)

    def save_recovery(epoch: int, update_idx: int) -> None:
        if args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0:
            rng_states[:] = gather_rng_states(args.distributed)
            if saver is not None:
                saver.save_recovery(epoch, batch_idx=update_idx)

    try:
        for epoch in range(start_epoch, num_epochs):
            _set_loader_epoch(loader_train, epoch)
            if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                _disable_mixup(loader_train, mixup_fn)
            train_metrics = train_one_epoch(
                epoch, task, loader_train, optimizer, settings, num_epochs,
                lr_scheduler=lr_scheduler, on_update=save_recovery)
            if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                utils.distribute_bn(task.get_trainable_module(), args.world_size, args.dist_bn == 'reduce')

            done = epoch + 1
            if done % args.val_interval != 0 and done != num_epochs:
                if lr_scheduler is not None:
                    lr_scheduler.step(done, metric=None)
                continue

            eval_metrics = None
            if loader_eval is not None:
                eval_metrics = validate(task.get_eval_model(), loader_eval, task, settings)
                ema_module = task.get_trainable_module(ema=True)
                if ema_module is not None and not args.model_ema_force_cpu:
                    if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                        utils.distribute_bn(ema_module, args.world_size, args.dist_bn == 'reduce')
                    eval_metrics = validate(task.get_eval_model(ema=True), loader_eval, task, settings, ' (EMA)')
            latest_metric = (eval_metrics or train_metrics)[eval_metric]

            rng_states[:] = gather_rng_states(args.distributed)
            if saver is not None:
                append_summary_row(
                    os.path.join(output_dir, 'summary.csv'), epoch, train_metrics, eval_metrics,
                    lr=sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups))
                result.best_metric, result.best_epoch = saver.save_checkpoint(epoch, metric=latest_metric)
            result.checkpoint_epoch = epoch
            if lr_scheduler is not None:
                lr_scheduler.step(done, latest_metric)
            entry = {'epoch': epoch, 'train': dict(train_metrics)}
            if eval_metrics is not None:
                entry['validation'] = dict(eval_metrics)
            result.epochs.append(entry)
    except KeyboardInterrupt:
        if saver is not None:  # a Ctrl-C may land during a save: whichever epoch last.pth.tar holds now
            result.checkpoint_epoch = saver.last_epoch
        raise
    if is_primary and result.best_metric is not None:
        _logger.info(f'Best {eval_metric}: {result.best_metric:.4f} (epoch {result.best_epoch}).')
    if is_primary:
        _print_results(result.epochs, eval_metric, decreasing)
    return result


def _continue_schedule(lr_scheduler, checkpoint: Dict[str, Any], start_epoch: int, is_primary: bool) -> None:
    """Continue the schedule of these arguments (rebuilt and stepped to ``start_epoch``, as timm's train.py does)
    exactly where the checkpoint's run was.

    The checkpoint's scheduler state is not loaded over it: for timm's schedulers other than plateau that state is
    the schedule's configuration (``t_initial``, warmup, ...), which would silently keep the old ``--epochs`` of a
    run extended with a larger one (learning rate 0 past its old end). What the arguments cannot rebuild is carried
    over: the plateau scheduler's progress (best metric, bad-epoch and cooldown counters, and, past its warmup, the
    learning rate itself, which only the optimiser holds and the rebuilt scheduler resets to ``--warmup-lr``), then
    the end-of-epoch step the run took after saving the checkpoint, with the checkpoint's metric. With unchanged
    arguments the result is the scheduler of an uninterrupted run, bit for bit.
    """
    saved = checkpoint.get('lr_scheduler') or {}
    if isinstance(lr_scheduler, PlateauLRScheduler) and saved:
        lr_scheduler.load_state_dict(saved)
        if 'reduce_on_plateau' in saved:
            lr_scheduler.lr_scheduler.load_state_dict(saved['reduce_on_plateau'])
        saved_groups = (checkpoint.get('optimizer') or {}).get('param_groups', [])
        if start_epoch > lr_scheduler.warmup_t and len(saved_groups) == len(lr_scheduler.optimizer.param_groups):
            for group, saved_group in zip(lr_scheduler.optimizer.param_groups, saved_groups):
                group['lr'] = saved_group['lr']
    now = lr_scheduler.state_dict()
    changed = [f'{key} {saved[key]} -> {now[key]}' for key in now if key != 'metric' and key in saved
               and saved[key] != now[key]]
    lr_scheduler.step(start_epoch, checkpoint.get('metric'))
    if changed and is_primary:
        _logger.info(f"Learning-rate schedule from this command's arguments, changed since the checkpoint "
                     f"({', '.join(changed)}); epoch {start_epoch} starts at lr "
                     f"{lr_scheduler.optimizer.param_groups[0]['lr']:.4g}.")


def _scheduler_state(lr_scheduler) -> Optional[Dict[str, Any]]:
    """The scheduler's ``state_dict()``; for plateau also torch's ``ReduceLROnPlateau`` state, whose bad-epoch and
    cooldown counters timm's plateau ``state_dict()`` leaves out and an exact resume needs."""
    if lr_scheduler is None:
        return None
    state = lr_scheduler.state_dict()
    if isinstance(lr_scheduler, PlateauLRScheduler):
        state['reduce_on_plateau'] = lr_scheduler.lr_scheduler.state_dict()
    return state


def _print_results(epochs: List[Dict[str, Any]], eval_metric: str, decreasing: bool) -> None:
    """timm train.py's closing ``--result`` block: the ten best epochs by the eval metric, best last, as JSON."""
    ranked = sorted(epochs, key=lambda e: e.get('validation', e['train']).get(eval_metric, 0), reverse=decreasing)
    print(f'--result\n{json.dumps(ranked[-10:], indent=4)}')


def _create_model(args: argparse.Namespace) -> nn.Module:
    in_chans = args.in_chans or (args.input_size[0] if args.input_size is not None else 3)
    factory_kwargs = {}
    if args.pretrained_path:
        # The file takes the place of the pretrained weights; num_classes=-1 lets timm adapt the head.
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    try:
        model = create_model(
            args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
            drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
            global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps,
            **factory_kwargs, **args.model_kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot create '{args.model}' with these arguments ({e}); check --model-kwargs.") from None
    if args.initial_checkpoint:
        check_initial_checkpoint(args.initial_checkpoint, model)
        load_checkpoint(model, args.initial_checkpoint)  # what create_model(checkpoint_path=...) does in train.py
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    if args.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, args.head_init_bias)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)}: {sum(p.numel() for p in model.parameters()):,} parameters.')
    return model


def _mixup_args(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    if not (args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None):
        return None
    return dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
        label_smoothing=args.smoothing, num_classes=args.num_classes)


def _train_criterion(args: argparse.Namespace, mixup_active: bool) -> nn.Module:
    """timm train.py's loss choice, built by timm's ``create_classification_loss``: soft targets under mixup, label
    smoothing otherwise. As in train.py, ``--bce-loss`` applies only with mixup or smoothing (plain cross-entropy
    without either)."""
    if args.bce_loss and (mixup_active or args.smoothing):
        return create_classification_loss(
            loss_type='bce', smoothing=args.smoothing, soft_targets=mixup_active,
            bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum, pos_weight=args.bce_pos_weight)
    return create_classification_loss(loss_type='ce', smoothing=args.smoothing, soft_targets=mixup_active)


def _create_loaders(args, data_config, device, model_dtype, mixup_args):
    input_img_mode = args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L')
    dataset_kwargs = dict(
        root=args.data_dir, class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
        input_img_mode=input_img_mode, input_key=args.input_key, target_key=args.target_key,
        trust_remote_code=args.dataset_trust_remote_code)
    try:
        dataset_train = create_dataset(
            args.dataset, split=args.train_split, is_training=True, seed=args.seed, repeats=args.epoch_repeats,
            num_samples=args.train_num_samples, **dataset_kwargs)
        dataset_eval = None
        if args.val_split:
            dataset_eval = create_dataset(
                args.dataset, split=args.val_split, is_training=False, num_samples=args.val_num_samples,
                **dataset_kwargs)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot read dataset '{args.dataset or args.data_dir}': {e}") from None

    common = dict(
        mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem,
        img_dtype=model_dtype or torch.float32, device=device, distributed=args.distributed,
        use_prefetcher=args.prefetcher)
    mixup_fn, collate_fn = None, None
    if mixup_args is not None:
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob, gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa,
        num_aug_repeats=args.aug_repeats,
        interpolation=data_config['interpolation'] if args.no_aug or not args.train_interpolation
        else args.train_interpolation,
        num_workers=args.workers, worker_seeding=args.worker_seeding, collate_fn=collate_fn,
        use_multi_epochs_loader=args.use_multi_epochs_loader, **common)
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], num_workers=args.workers,
            crop_pct=data_config['crop_pct'], **common)
    if len(loader_train) == 0:
        raise ConfigError(f'the training split has fewer samples than one batch ({args.batch_size}).')
    return loader_train, loader_eval, mixup_fn


def _resolve_lr(args: argparse.Namespace, is_primary: bool) -> None:
    """timm's rule: without --lr, lr = lr_base * (global batch / lr_base_size), square-rooted for adaptive opts."""
    if args.lr:
        return
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    if not args.lr_base_scale:
        args.lr_base_scale = 'sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear'
    if args.lr_base_scale == 'sqrt':
        ratio = ratio ** 0.5
    args.lr = args.lr_base * ratio
    if is_primary:
        _logger.info(f'Learning rate {args.lr:.4g} = base {args.lr_base} x ({global_batch} / {args.lr_base_size}), '
                     f'{args.lr_base_scale} scaling.')


def _agree_on_primary(args: argparse.Namespace, decide):
    """Run ``decide`` on the primary process and share its result (or its ConfigError) with every process."""
    outcome = None
    if utils.is_primary(args):
        try:
            outcome = ('ok', decide())
        except ConfigError as e:
            outcome = ('error', str(e))
    if args.distributed:
        shared = [outcome]
        dist.broadcast_object_list(shared, src=0)
        outcome = shared[0]
    if outcome[0] == 'error':
        raise ConfigError(outcome[1])
    return outcome[1]


def _write_args(output_dir: str, args_text: str, resume: str, start_epoch: int) -> None:
    """``args.yaml`` records the run's recipe; a resumed invocation adds ``args-resume-<epoch>.yaml`` beside it."""
    name = 'args.yaml'
    if resume and os.path.exists(os.path.join(output_dir, name)):
        name = f'args-resume-{start_epoch}.yaml'
    atomic_write_text(os.path.join(output_dir, name), args_text)


def _set_loader_epoch(loader, epoch: int) -> None:
    for owner in (loader.dataset, getattr(loader, 'batch_sampler', None), loader.sampler):
        if hasattr(owner, 'set_epoch'):
            owner.set_epoch(epoch)
            if owner is not loader.dataset:
                return


def _disable_mixup(loader, mixup_fn) -> None:
    if getattr(loader, 'mixup_enabled', False):
        loader.mixup_enabled = False
    if mixup_fn is not None:
        mixup_fn.mixup_enabled = False
