"""RSPC for hand-written training loops, as a callable in the spirit of ``timm.data.Mixup``.

```python
rspc = RSPCHook(model)                          # owns C and C's optimiser
rspc.attach_optimizer(optimizer, loss_scaler)   # optional: step C whenever the optimiser steps
for x, y in loader:
    x, y = mixup_fn(x, y)
    x, y = rspc(x, y)                           # x: cat([corrupted, clean]); the blocks are hooked until split
    with autocast:
        output, align_loss = rspc.split(model(x))
        loss = criterion(output, y) + rspc.align_weight * align_loss
    loss.backward()
    optimizer.step()                            # C steps here when attached, else call rspc.step()
    optimizer.zero_grad()
```
`RSPCTask` is the same method packaged for timm's task-based ``train.py``.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .adversary import create_adversary
from .capture import AlignmentRecording, PairedBlockDistance
from .corruption import PatchCorruptionModel
from .input_gradient import InputGradientSplit, find_input_conv, split_input_gradient
from .settings import RSPCSettings

__all__ = ['RSPCHook']


class RSPCHook:
    """Corrupts a batch for the paired forward pass and collects the alignment loss from it.

    Arguments are those of `RSPCTask` (minus the criterion and the generator): ``settings`` and any `RSPCSettings`
    field by name. ``device`` / ``dtype`` place C (default: where the model's first parameter is). The model is
    hooked from ``rspc(x, target)`` to ``rspc.split(output)`` only. C's gradients are averaged over processes when it
    steps; in a distributed run, call `broadcast_parameters()` once before training so that all ranks start from
    rank 0's C.
    """

    def __init__(
            self,
            model: nn.Module,
            settings: Optional[RSPCSettings] = None,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None,
            img_size: Union[None, int, Sequence[int]] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            **setting_overrides,
    ):
        settings = RSPCSettings.resolve(settings, **setting_overrides)
        if device is None or dtype is None:
            first = next(model.parameters(), None)
            device = device if device is not None else (first.device if first is not None else None)
            dtype = dtype if dtype is not None else (first.dtype if first is not None else None)
        self.settings = settings
        self.corruption, self.corruption_optimizer = create_adversary(
            model, settings, mean=mean, std=std, img_size=img_size, device=device, dtype=dtype)
        self.alignment = PairedBlockDistance(model, settings.blocks)
        self.occluded_fraction: Optional[torch.Tensor] = None
        self._recording: Optional[AlignmentRecording] = None
        self._model = model
        self._input_conv = find_input_conv(model)
        self._input_split: Optional[InputGradientSplit] = None

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(ratio={self.corruption_model.ratio}, align_weight={self.align_weight}, '
                f'{self.alignment}, {self.corruption_optimizer})')

    @property
    def align_weight(self) -> float:
        """lambda, the weight of the alignment loss in ``loss = task_loss + lambda * align_loss``."""
        return self.settings.align_weight

    @property
    def corruption_model(self) -> PatchCorruptionModel:
        return self.corruption.corruption_model

    def __call__(
            self,
            x: torch.Tensor,
            target: torch.Tensor,
            noise: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like ``Mixup``: ``(x, target) -> (cat([corrupted x, x]), target)``; hooks the blocks until `split`.

        The target is returned unchanged: the task loss is computed on the clean half only (see `split`).
        """
        corrupted = self.corruption(x, noise=noise, generator=generator)
        self.occluded_fraction = corrupted.occluded_fraction()
        self._stop_recording()  # a pass abandoned before split (an exception) must not leave its hooks behind
        self._recording = self.alignment.record()
        # The first convolution computes the corrupted half's input gradient only, if the model gets this very batch.
        self._input_split = split_input_gradient(self._model, self._input_conv, corrupted.images)
        paired = torch.cat([corrupted.images, x])
        self._input_split.paired.append(paired)
        return paired, target

    def split(self, output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """From the model's output on the paired batch: ``(clean half of output, align_loss)``; unhooks the blocks."""
        if self._recording is None:
            raise RuntimeError('RSPCHook.split needs a paired forward pass: call rspc(x, target) and run the model on '
                               'the paired batch it returns first.')
        recording, self._recording = self._recording, None
        self._stop_input_split()
        return output[output.shape[0] // 2:], recording.measure()

    def _stop_recording(self) -> None:
        if self._recording is not None:
            self._recording.close()
            self._recording = None
        self._stop_input_split()

    def _stop_input_split(self) -> None:
        if self._input_split is not None:
            self._input_split.close()
            self._input_split = None

    def loss(self, task_loss: torch.Tensor, align_loss: torch.Tensor) -> torch.Tensor:
        """``task_loss + align_weight * align_loss``."""
        return task_loss + self.align_weight * align_loss

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, loss_scaler: Any = None) -> 'RSPCHook':
        """Step C whenever ``optimizer`` steps (see `CorruptionOptimizer.attach`)."""
        self.corruption_optimizer.attach(optimizer, loss_scaler)
        return self

    def step(self) -> None:
        """Update C from its accumulated gradients (when not attached to the main optimiser)."""
        self.corruption_optimizer.step()

    def broadcast_parameters(self, src: int = 0) -> None:
        self.corruption_optimizer.broadcast_parameters(src)

    def to(self, *args, **kwargs) -> 'RSPCHook':
        self.corruption.to(*args, **kwargs)
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {
            'corruption_model': self.corruption_model.state_dict(),
            'corruption_optimizer': self.corruption_optimizer.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.corruption_model.load_state_dict(state['corruption_model'])
        self.corruption_optimizer.load_state_dict(state['corruption_optimizer'])

    def remove(self) -> None:
        """Take any pending alignment hooks off the model and detach from the optimiser."""
        self._stop_recording()
        self.corruption_optimizer.detach()
