"""Command-line flags for RSPC and the task factory that reads them: three lines turn timm's train.py into RSPC.

```python
add_rspc_args(parser)                                     # with the other argument groups
task = create_rspc_task(args, model, train_loss_fn, device=device, dtype=model_dtype)   # instead of ClassificationTask
task.attach_optimizer(optimizer, loss_scaler)             # right after create_optimizer_v2(...)
```
Without ``--rspc`` the factory returns timm's classification task (with a no-op ``attach_optimizer``).
Defaults are the authors' (``RSPC_RVT/main.py``, ``RSPC_FAN/main.py``).
"""
import argparse
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.task import TrainingTask

from .capture import parse_block_spec
from .corruption import NOISE_MODES
from .corruption_optimizer import CLIP_MODES
from .task import PlainClassificationTask, RSPCTask, resolve_mean_std

__all__ = ['add_rspc_args', 'create_rspc_task']


def add_rspc_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``RSPC`` argument group (``--rspc`` and ``--rspc-*``) to ``parser``; returns the group."""
    group = parser.add_argument_group('RSPC', 'Reducing Sensitivity to Patch Corruptions (CVPR 2023)')
    group.add_argument('--rspc', action='store_true', default=False,
                       help='Train with RSPC (adversarial patch corruption + feature alignment).')
    group.add_argument('--rspc-ratio', type=float, default=0.1, metavar='RHO',
                       help='Fraction of patches the corruption model corrupts, in (0, 1) (default: 0.1).')
    group.add_argument('--rspc-lambda', type=float, default=0.005, metavar='LAMBDA',
                       help='Weight of the feature alignment loss, >= 0 (default: 0.005).')
    group.add_argument('--rspc-blocks', type=str, default=None, metavar='SPEC',
                       help="Blocks to align: comma-separated indices ('-1'), slices ('8:') or module name patterns "
                            "('transformers.2.blocks.*') (default: all transformer blocks).")
    group.add_argument('--rspc-noise', type=str, default='normalized', choices=NOISE_MODES,
                       help='Noise for corrupted patches: U[0,1) in normalised space (the authors\') or in pixel '
                            'space (default: normalized).')
    group.add_argument('--rspc-opt', type=str, default='sgd', metavar='OPTIMIZER',
                       help="Corruption model optimiser, a timm optimiser name (default: 'sgd', Nesterov).")
    group.add_argument('--rspc-lr', type=float, default=1e-4, metavar='LR',
                       help='Corruption model learning rate (default: 1e-4).')
    group.add_argument('--rspc-momentum', type=float, default=0.9, metavar='M',
                       help='Corruption model optimiser momentum (default: 0.9).')
    group.add_argument('--rspc-weight-decay', type=float, default=0.05, metavar='WD',
                       help='Corruption model weight decay (default: 0.05).')
    group.add_argument('--rspc-clip-grad', type=float, default=5.0, metavar='NORM',
                       help='Max gradient norm of the corruption model, after AMP unscaling; 0 disables '
                            '(default: 5.0).')
    group.add_argument('--rspc-clip-mode', type=str, default='norm', choices=CLIP_MODES,
                       help="'norm': clip the corruption model's gradient norm to --rspc-clip-grad; 'normalize': "
                            "rescale it to exactly that norm, the update the authors' fp16 AMP runs made "
                            "(default: 'norm').")
    return group


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


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

    Mean / std (for the clamp range of corrupted images) and the input size come from ``mean`` / ``std`` when given,
    else from timm's data config resolved from ``args`` (``--mean``, ``--std``, ``--input-size``, ``--img-size``) and
    the model's pretrained cfg. Missing ``rspc_*`` attributes take the defaults of `add_rspc_args`.
    """
    if not _arg(args, 'rspc', False):
        return PlainClassificationTask(model=model, criterion=criterion, device=device, dtype=dtype, verbose=verbose)
    data_args = {k: v for k, v in vars(args).items() if k in ('input_size', 'img_size', 'mean', 'std')}
    mean, std, data_config = resolve_mean_std(model, mean, std, data_config=data_args)
    # An input size set on the command line wins; otherwise C follows the model's own patch grid.
    size_given = data_args.get('input_size') is not None or data_args.get('img_size') is not None
    return RSPCTask(
        model=model,
        criterion=criterion,
        ratio=_arg(args, 'rspc_ratio', 0.1),
        align_weight=_arg(args, 'rspc_lambda', 0.005),
        blocks=parse_block_spec(_arg(args, 'rspc_blocks')),
        noise=_arg(args, 'rspc_noise', 'normalized'),
        mean=mean,
        std=std,
        img_size=tuple(data_config['input_size'][-2:]) if size_given else None,
        corruption_opt=_arg(args, 'rspc_opt', 'sgd'),
        corruption_lr=_arg(args, 'rspc_lr', 1e-4),
        corruption_momentum=_arg(args, 'rspc_momentum', 0.9),
        corruption_weight_decay=_arg(args, 'rspc_weight_decay', 0.05),
        corruption_clip_grad=_arg(args, 'rspc_clip_grad', 5.0),
        corruption_clip_mode=_arg(args, 'rspc_clip_mode', 'norm'),
        device=device,
        dtype=dtype,
        verbose=verbose,
    )
