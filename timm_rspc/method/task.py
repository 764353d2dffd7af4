"""RSPC as a ``timm.task.TrainingTask``: a drop-in for timm's ``ClassificationTask`` in task-based training.

One step (``task(input, target)``):

1. the corruption model C keeps all but the ``ratio`` lowest-scoring patches of each image and replaces the others
   with noise (`AdversarialPatchCorruption`);
2. the backbone runs once on ``cat([corrupted, clean])``; hooks on the chosen blocks, present only during that
   forward, hand their outputs to the feature distance between the two halves (`RSPCTrainableModule`,
   `PairedBlockDistance`);
3. ``loss = criterion(clean logits, target) + align_weight * align_loss``: any timm criterion (label smoothing,
   mixup soft targets, BCE) sees the clean half only.

One backward trains both sides: the backbone descends ``loss``, the gradient reversal on C's output makes C ascend
``align_loss``. C is not part of `get_trainable_module()` (timm builds the main optimiser from it): C has its own
optimiser (`CorruptionOptimizer`), stepped through `attach_optimizer` whenever the main optimiser steps.

What a checkpoint holds: ``state_dict`` is the plain backbone (loadable with ``timm.create_model(..., pretrained_cfg_
overlay=dict(file=...))``); ``task_state`` holds C's weights and its optimiser state, so resume continues exactly. EMA
covers the backbone only.
"""
import inspect
import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import group_parameters
from timm.utils import unwrap_model
from timm.utils.model_ema import ModelEmaV3

from .._timm_compat import resolve_classification_loss, timm_task_classes
from .adversary import create_adversary
from .capture import PairedBlockDistance
from .corruption import PatchCorruptionModel
from .input_gradient import find_input_conv, split_input_gradient
from .settings import RSPCSettings

ClassificationTask, TrainingTask = timm_task_classes()  # timm.task (1.0.23+); older: constructing a task says so

_logger = logging.getLogger(__name__)

__all__ = ['RSPCTrainableModule', 'RSPCTask', 'PlainClassificationTask']


class RSPCTrainableModule(nn.Module):
    """The backbone plus the alignment hooks; everything trainable by the main optimiser runs in its forward.

    ``forward(clean, corrupted)`` runs the backbone once on ``cat([corrupted, clean])`` (the authors' order) and
    returns ``(clean logits, align_loss)``. Keeping the paired forward and the alignment loss inside one module is
    what lets DDP and ``torch.compile`` see the whole step (the pattern of timm's FeatureDistillationTask). The
    alignment hooks live only inside this forward (`PairedBlockDistance`): the backbone carries none between steps.
    """

    def __init__(self, model: nn.Module, alignment: PairedBlockDistance):
        super().__init__()
        self.model = model
        self.alignment = alignment
        self.input_conv_name = find_input_conv(model)  # see `split_input_gradient`

    def no_weight_decay(self):
        model = unwrap_model(self.model)
        if not hasattr(model, 'no_weight_decay'):
            return set()
        return {'model.' + name for name in model.no_weight_decay()}

    def group_matcher(self, coarse: bool = False):
        model = unwrap_model(self.model)
        if not hasattr(model, 'group_matcher'):
            return {}
        layer_map = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        last_layer = max(layer_map.values(), default=0)
        return lambda name: layer_map.get(name[len('model.'):], last_layer) if name.startswith('model.') else last_layer

    def forward(self, clean: torch.Tensor, corrupted: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        recording = self.alignment.record()  # before any tensor op: a graph break under torch.compile
        split = split_input_gradient(self.model, self.input_conv_name, corrupted)
        try:
            paired = torch.cat([corrupted, clean])
            split.paired.append(paired)
            logits = self.model(paired)
        finally:
            recording.close()
            split.close()
        return logits[clean.shape[0]:], recording.measure()


class RSPCTask(TrainingTask):
    """Classification training with RSPC (Guo, Stutz, Schiele, CVPR 2023).

    Args:
        model: the backbone, any timm image classifier (ViT, RVT, FAN, Swin, PVT, ConvNeXt, ...; see README's table).
        criterion: loss on the clean logits; created by timm's ``create_classification_loss(**criterion_kwargs)``
            when None.
        criterion_kwargs: see ``criterion``.
        settings: RSPC's hyper-parameters (default: the authors', see `RSPCSettings`); ``setting_overrides``
            replace fields by name, e.g. ``RSPCTask(model, ratio=0.2, align_weight=0.01, corruption_lr=1e-3)``.
        mean, std: the model's input normalisation, which sets the range corrupted images are clamped to (default:
            timm's data config of the model).
        img_size: C's input size, the training resolution (default: the model's, see `find_patch_grid`); C's patch
            size is the setting ``patch_size`` (``RSPCTask(model, patch_size=16)``).
        generator: a ``torch.Generator`` for the noise (default: the global RNG); ``forward`` can also take an
            explicit ``noise`` tensor or a per-call generator.
        device, dtype, verbose: as for timm's tasks; C is created on ``device`` with ``dtype``.

    ``forward(input, target)`` returns ``loss``, ``output`` (clean logits), ``task_loss``, ``align_loss`` and
    ``occluded_fraction`` (of patches), all tensors; nothing in it synchronises with the device.
    """

    def __init__(
            self,
            model: nn.Module,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            settings: Optional[RSPCSettings] = None,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None,
            img_size: Union[None, int, Sequence[int]] = None,
            generator: Optional[torch.Generator] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
            **setting_overrides,
    ):
        settings = RSPCSettings.resolve(settings, **setting_overrides)  # checked before anything is built
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        self.settings = settings
        self.generator = generator
        self.criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=criterion_kwargs)

        self.corruption, self.corruption_optimizer = create_adversary(
            model, settings, mean=mean, std=std, img_size=img_size, device=self.device,
            dtype=self.dtype)
        corruption_model = self.corruption.corruption_model
        self.trainable_module = RSPCTrainableModule(model, PairedBlockDistance(model, settings.blocks))

        if self.verbose:
            names = self.alignment.block_names
            listed = ', '.join(names) if len(names) <= 2 else f'{names[0]} ... {names[-1]}'
            _logger.info(
                f'RSPCTask: ratio={settings.ratio}, align_weight={settings.align_weight}, noise={settings.noise}, '
                f'corruption grid {corruption_model.grid_size[0]}x{corruption_model.grid_size[1]} of '
                f'{corruption_model.patch_size} px patches, aligning {len(names)} block{"s" * (len(names) != 1)} '
                f'({listed}), C optimiser {self.corruption_optimizer}')

    @property
    def align_weight(self) -> float:
        """lambda, the weight of the alignment loss in ``loss = task_loss + lambda * align_loss``."""
        return self.settings.align_weight

    @property
    def corruption_model(self) -> PatchCorruptionModel:
        return self.corruption.corruption_model

    @property
    def alignment(self) -> PairedBlockDistance:
        return self._unwrapped_trainable().alignment

    def _unwrapped_trainable(self) -> RSPCTrainableModule:
        return unwrap_model(self.trainable_module)

    # --- corruption model optimisation ---------------------------------------------------------------------------

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, loss_scaler: Any = None) -> 'RSPCTask':
        """Step C's optimiser whenever ``optimizer`` (the backbone's) steps; pass timm's ``loss_scaler`` with AMP."""
        self.corruption_optimizer.attach(optimizer, loss_scaler)
        return self

    def step_corruption_model(self) -> None:
        """Update C now, for custom loops that do not `attach_optimizer` (see `CorruptionOptimizer.step`)."""
        self.corruption_optimizer.step()

    # --- timm TrainingTask hooks -----------------------------------------------------------------------------------

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'RSPCTask':
        """Make C identical on all ranks (from rank 0) and wrap the trainable module in DDP.

        C is not DDP-wrapped: its gradients are averaged over the ranks when it steps (`CorruptionOptimizer.step`).
        """
        from torch.nn.parallel import DistributedDataParallel as DDP
        self.corruption_optimizer.broadcast_parameters(src=0)
        if ddp_kwargs.get('broadcast_buffers') is True and 'forward_sync_buffers' in inspect.signature(DDP).parameters:
            # timm's train.py passes broadcast_buffers=True (its default), which newer torch deprecates with a warning
            # per process; forward_sync_buffers=True is the same behaviour (buffers synced at init and every forward)
            ddp_kwargs = {k: v for k, v in ddp_kwargs.items() if k != 'broadcast_buffers'}
            ddp_kwargs['forward_sync_buffers'] = True
        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile the paired training forward and, separately, the backbone for evaluation."""
        self.eval_model = torch.compile(
            self._unwrapped_trainable().model, backend=backend, mode=mode, **compile_kwargs)
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        return self.eval_model

    def setup_ema(
            self,
            decay: float = 0.9999,
            use_warmup: bool = False,
            device: Optional[torch.device] = None,
            **kwargs,
    ) -> nn.Module:
        """EMA of the backbone only (C is training-time machinery; the backbone carries no hooks to copy)."""
        self.trainable_module_ema = ModelEmaV3(
            self._unwrapped_trainable().model, decay=decay, use_warmup=use_warmup, device=device, **kwargs)
        return self.trainable_module_ema

    def update_ema(self, step: Optional[int] = None) -> None:
        if self.has_ema():
            self.trainable_module_ema.update(unwrap_model(self._unwrapped_trainable().model), step=step)

    def get_eval_model(self, module: Optional[nn.Module] = None, ema: bool = False) -> Optional[nn.Module]:
        """The plain backbone (or its EMA / compiled version): what validation and checkpoints see."""
        resolved = super().get_eval_model(module=module, ema=ema)
        current = resolved
        while current is not None:
            if isinstance(current, RSPCTrainableModule):
                return current.model
            inner = getattr(current, 'module', None)  # DDP, ModelEmaV3
            current = inner if inner is not None else getattr(current, '_orig_mod', None)  # torch.compile
        return resolved

    def get_clip_parameters(self, exclude_head: bool = False):
        parameters = list(self._unwrapped_trainable().model.parameters())
        return parameters[:-2] if exclude_head else parameters

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """C's weights, its optimiser state and the noise generator's state when the task has one (nothing for the EMA
        side, which holds the backbone only)."""
        if ema:
            return {}
        state = {
            'corruption_model': self.corruption_model.state_dict(),
            'corruption_optimizer': self.corruption_optimizer.state_dict(),
        }
        if self.generator is not None:
            state['noise_generator'] = self.generator.get_state()
        return state

    def load_task_state(
            self,
            state: Optional[Dict[str, Any]],
            strict: bool = True,
            module: Optional[nn.Module] = None,
            ema: bool = False,
    ) -> None:
        if ema:
            return
        if not state or 'corruption_model' not in state:
            # A plain (non-RSPC) checkpoint: the backbone is restored, C starts afresh.
            if self.verbose:
                _logger.warning('RSPCTask: the checkpoint has no corruption model state; C starts from scratch.')
            return
        self.corruption_model.load_state_dict(state['corruption_model'], strict=strict)
        if 'corruption_optimizer' in state:
            self.corruption_optimizer.load_state_dict(state['corruption_optimizer'])
        elif strict:
            raise RuntimeError('The checkpoint has corruption model weights but no corruption optimiser state.')
        if self.generator is not None and 'noise_generator' in state:
            self.generator.set_state(state['noise_generator'])

    def forward(
            self,
            input: torch.Tensor,
            target: torch.Tensor,
            noise: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """One RSPC forward pass and loss; ``noise`` / ``generator`` pin the corruption noise for reproducibility."""
        if generator is None:
            generator = self.generator
        corrupted = self.corruption(input, noise=noise, generator=generator)
        output, align_loss = self.trainable_module(input, corrupted.images)
        task_loss = self.criterion(output, target)
        return {
            'loss': task_loss + self.align_weight * align_loss,
            'output': output,
            'task_loss': task_loss,
            'align_loss': align_loss,
            'occluded_fraction': corrupted.occluded_fraction(),
        }


class PlainClassificationTask(ClassificationTask):
    """timm's ``ClassificationTask`` with the RSPC task's `attach_optimizer` as a no-op.

    What `create_rspc_task` returns without ``--rspc``, so that one training recipe serves both settings.
    """

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, loss_scaler: Any = None) -> 'PlainClassificationTask':
        return self
