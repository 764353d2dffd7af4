"""The corruption model's own optimiser, stepped in lockstep with the backbone's.

C is trained with its own optimiser (configured by the ``corruption_*`` fields of `RSPCSettings`; by default the
authors' Nesterov SGD), separate from the backbone's, so it is not among the parameters timm builds the main optimiser
from. `CorruptionOptimizer.attach` registers a step post-hook on the main optimiser: C steps exactly when the
backbone does, so gradient accumulation (C's gradients add up over the micro-batches of one update) and AMP steps
skipped for overflow (the hook does not run) are handled by the main training loop's own logic.

One C step: average C's gradients over the processes (DDP-safe without wrapping C; C stays identical on all ranks),
unscale them with the AMP GradScaler, clip their norm, zero any non-finite values, step, zero the gradients.

The authors clip C's gradients while they are still multiplied by the AMP loss scale, so their clip threshold of 5
applies to ``scale * grad`` (scale ~65536 and varying) and effectively normalises every C step. Here gradients are
unscaled first, so ``clip_grad`` means what it says in fp16 as in fp32; results differ from the authors' only under
fp16 AMP with a loss scaler. Their published runs used fp16 AMP throughout, where ``||scale * grad||`` always exceeds
5: every C step was then a step of gradient norm exactly 5. ``clip_mode='normalize'`` reproduces that update in any
precision (the gradient is rescaled to norm ``clip_grad``, up or down), for runs that must follow the paper's C
dynamics.
"""
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2

from .settings import CLIP_MODES, RSPCSettings

__all__ = ['CLIP_MODES', 'CorruptionOptimizer', 'resolve_grad_scaler']


def resolve_grad_scaler(loss_scaler: Any) -> Optional[torch.amp.GradScaler]:
    """The ``torch.amp.GradScaler`` behind timm's ``NativeScaler`` (or a GradScaler itself); None for None."""
    if loss_scaler is None:
        return None
    scaler = getattr(loss_scaler, '_scaler', loss_scaler)
    if not hasattr(scaler, 'unscale_') or not hasattr(scaler, 'is_enabled'):
        raise TypeError(
            f'Unsupported loss scaler {type(loss_scaler).__name__}: pass timm.utils.NativeScaler or '
            f'torch.amp.GradScaler (APEX AMP is not supported by the RSPC corruption model optimiser).')
    return scaler


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class CorruptionOptimizer:
    """Optimiser of the corruption model C, stepped after each step of the main optimiser.

    Args:
        module: the corruption model C.
        settings: the ``corruption_*`` fields of `RSPCSettings` configure it (default: the authors' Nesterov SGD,
            lr 1e-4, momentum 0.9, weight decay 0.05, gradient norm clipped to 5); ``overrides`` replace fields by
            name (e.g. ``corruption_lr=1e-3``). ``corruption_clip_mode='normalize'`` rescales the gradient to exactly
            ``corruption_clip_grad``, the update the authors' fp16 runs made (see the module docstring).
    """

    def __init__(self, module: nn.Module, settings: Optional[RSPCSettings] = None, **overrides):
        settings = RSPCSettings.resolve(settings, **overrides)
        self.module = module
        self.clip_grad = settings.corruption_clip_grad or None
        self.clip_mode = settings.corruption_clip_mode
        opt, momentum = settings.corruption_opt, settings.corruption_momentum
        if momentum == 0 and opt.lower() in ('sgd', 'nesterov'):
            opt = 'momentum'  # timm's plain (non-Nesterov) SGD: Nesterov needs a non-zero momentum
        self.optimizer = create_optimizer_v2(
            module, opt=opt, lr=settings.corruption_lr, weight_decay=settings.corruption_weight_decay,
            momentum=momentum)
        self.grad_scaler: Optional[torch.amp.GradScaler] = None
        self._hook_handle = None

    def __repr__(self) -> str:
        group = self.optimizer.param_groups[0]
        return (f'{type(self).__name__}({type(self.optimizer).__name__}, lr={group["lr"]}, '
                f'weight_decay={group.get("weight_decay")}, clip_grad={self.clip_grad}, clip_mode={self.clip_mode})')

    def attach(self, optimizer: torch.optim.Optimizer, loss_scaler: Any = None) -> None:
        """Step C whenever ``optimizer`` steps. ``loss_scaler``: timm ``NativeScaler`` / ``GradScaler`` when using one.

        Attaching again (e.g. to a new optimiser) replaces the previous attachment.
        """
        self.detach()
        self.grad_scaler = resolve_grad_scaler(loss_scaler)
        self._hook_handle = optimizer.register_step_post_hook(lambda *_: self.step())

    def detach(self) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None

    @property
    def attached(self) -> bool:
        return self._hook_handle is not None

    @torch.no_grad()
    def broadcast_parameters(self, src: int = 0) -> None:
        """Copy C's parameters from rank ``src`` to every rank (no-op outside distributed runs)."""
        if _distributed_world_size() > 1:
            for param in self.module.parameters():
                dist.broadcast(param, src)

    @torch.no_grad()
    def step(self) -> None:
        """One update of C from its accumulated gradients (already reversed by the gradient reversal).

        With an AMP GradScaler, call this between ``scaler.step(optimizer)`` and ``scaler.update()`` (the attached
        hook does), since the gradients are unscaled with the scale of the current step.
        """
        params = [p for p in self.module.parameters() if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        world_size = _distributed_world_size()
        if world_size > 1:
            for grad in grads:
                dist.all_reduce(grad)
            torch._foreach_div_(grads, float(world_size))
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            # Also reports an overflow of C's gradients to the scaler, lowering the scale at its next update().
            self.grad_scaler.unscale_(self.optimizer)
        if self.clip_mode == 'normalize':
            total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            # no additive epsilon: C's unscaled gradient norm is ~1e-3, where clip_grad_norm_'s 1e-6 would show
            torch._foreach_mul_(grads, self.clip_grad / total_norm.clamp_min(1e-12))
        elif self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        for grad in grads:
            # An overflow makes the clipped gradient all NaN: the step then leaves C to weight decay and momentum.
            grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> Dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)
