"""Command-line flags for RSPC and the task factory that reads them: three lines turn timm's train.py into RSPC.

```python
add_rspc_args(parser)                                     # with the other argument groups
task = create_rspc_task(args, model, train_loss_fn, device=device, dtype=model_dtype)   # instead of ClassificationTask
task.attach_optimizer(optimizer, loss_scaler)             # right after create_optimizer_v2(...)
```
Without ``--rspc`` the factory returns timm's classification task (with a no-op ``attach_optimizer``). Every
``--rspc-*`` flag is derived from a field of `RSPCSettings` (name, default, range, help) and checked while the
command line is parsed, so a NaN or out-of-range value stops the run with argparse's one-line error before anything
else happens.
"""
import argparse
import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from .adversary import resolve_mean_std
from .settings import RSPCSettings, parse_setting, setting_problem
from .task import PlainClassificationTask, RSPCTask, TrainingTask

__all__ = ['add_rspc_args', 'create_rspc_task', 'setting_type']


def setting_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type`` for the `RSPCSettings` field ``name``: parses it and rejects what the settings reject."""

    def parse(text: str) -> Any:
        value = parse_setting(name, text)
        problem = setting_problem(name, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


def add_rspc_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``RSPC`` argument group (``--rspc`` and one ``--rspc-*`` flag per `RSPCSettings` field)."""
    group = parser.add_argument_group('RSPC', 'Reducing Sensitivity to Patch Corruptions (CVPR 2023)')
    group.add_argument('--rspc', action='store_true', default=False,
                       help='Train with RSPC (adversarial patch corruption + feature alignment).')
    for field in dataclasses.fields(RSPCSettings):
        meta = field.metadata
        help_text = meta['help'] if meta['interval'] is None else f"{meta['help']}, {meta['interval']}"
        if field.default is not None:
            help_text += f' (default: {field.default})'
        kwargs = dict(default=field.default, metavar=meta['metavar'], help=help_text + '.')
        if meta['choices'] is not None:
            kwargs['choices'] = meta['choices']
        elif field.name != 'blocks':
            kwargs['type'] = setting_type(field.name)
        group.add_argument(meta['flag'], dest=RSPCSettings.dest(field.name), **kwargs)
    return group


def create_rspc_task(
        args: argparse.Namespace,
        model: nn.Module,
        criterion: Optional[Union[nn.Module, Callable]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        verbose: bool = True,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
) -> TrainingTask:
    """An `RSPCTask` configured from ``args`` when ``args.rspc``, else a `PlainClassificationTask`.

    The RSPC settings are read by `RSPCSettings.from_args` (missing ``rspc_*`` attributes take their defaults; a
    bad value is a ValueError naming the flag). Mean / std (for the clamp range of corrupted images) and the input
    size come from ``mean`` / ``std`` when given, else from timm's data config resolved from ``args`` (``--mean``,
    ``--std``, ``--input-size``, ``--img-size``) and the model's pretrained cfg.
    """
    if not getattr(args, 'rspc', False):
        return PlainClassificationTask(model=model, criterion=criterion, device=device, dtype=dtype, verbose=verbose)
    settings = RSPCSettings.from_args(args)
    data_args = {k: v for k, v in vars(args).items() if k in ('input_size', 'img_size', 'mean', 'std')}
    mean, std, data_config = resolve_mean_std(model, mean, std, data_config=data_args)
    # An input size set on the command line wins; otherwise C follows the model's own patch grid.
    size_given = data_args.get('input_size') is not None or data_args.get('img_size') is not None
    return RSPCTask(
        model=model,
        criterion=criterion,
        settings=settings,
        mean=mean,
        std=std,
        img_size=tuple(data_config['input_size'][-2:]) if size_given else None,
        device=device,
        dtype=dtype,
        verbose=verbose,
    )
