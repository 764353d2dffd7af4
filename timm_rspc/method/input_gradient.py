"""The paired batch's input gradient, computed for the corrupted half only.

The backbone's first layer receives ``cat([corrupted, clean])`` as one tensor, so autograd computes its input gradient
for the whole paired batch, although only the corrupted half needs one (it carries C's gradient; the clean images are
data). For RVT's 7x7 stride-2 stem convolution at 224 px the wasted half is a transposed convolution over B images.

When the first layer is a plain ``nn.Conv2d`` (zero padding), `split_input_gradient` hooks it for one paired forward:
the convolution runs on the detached batch (its weight and bias gradients are unchanged: one convolution over the whole
batch, as before) and a pass-through node on its output adds the input gradient of the corrupted half alone, with the
same kernel autograd would call (``torch.nn.grad.conv2d_input``). Gradients are bit-identical to the plain paired
forward. The hooks act only when the layer receives the paired batch itself; otherwise they change nothing.
"""
from typing import List, NamedTuple, Optional

import torch
import torch.nn as nn
from timm.utils import unwrap_model
from torch.utils.hooks import RemovableHandle

__all__ = ['find_input_conv', 'split_input_gradient', 'InputGradientSplit']


def find_input_conv(model: nn.Module) -> Optional[str]:
    """Name of the model's first convolution, in registration order, if it is a plain zero-padded ``nn.Conv2d``
    (else None).

    Registration order is not always execution order; `split_input_gradient` therefore also checks, at run time,
    that this layer receives the paired batch itself.
    """
    for name, module in unwrap_model(model).named_modules():
        if isinstance(module, nn.Conv2d):
            plain = type(module) is nn.Conv2d and module.padding_mode == 'zeros'
            return name if plain and isinstance(module.padding, tuple) else None
    return None


class _CorruptedInputGradient(torch.autograd.Function):
    """Identity on the convolution's output; its backward also gives ``corrupted`` (the first ``len(corrupted)``
    images of the convolution's input) their input gradient."""

    @staticmethod
    def forward(ctx, output, corrupted, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(corrupted, weight)
        ctx.conv_args = (stride, padding, dilation, groups)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        corrupted, weight = ctx.saved_tensors
        grad_corrupted = None
        if ctx.needs_input_grad[1]:
            # Under autocast the convolution ran in the output's dtype (float16 / bfloat16) on cast copies of its
            # input and weight; autograd's own backward uses that weight copy, then casts the gradient back to the
            # input's dtype. The same two casts here keep the gradient bit-identical to the unsplit forward.
            grad_corrupted = torch.nn.grad.conv2d_input(
                corrupted.shape, weight.to(grad_output.dtype), grad_output[:corrupted.shape[0]], *ctx.conv_args,
            ).to(corrupted.dtype)
        return grad_output, grad_corrupted, None, None, None, None, None


class InputGradientSplit(NamedTuple):
    """The hooks of one paired forward. ``paired`` receives the paired batch once it exists (the hooks are registered
    before any tensor operation, so that ``torch.compile`` sees the forward as one graph); ``applied`` records whether
    the layer saw that batch (for tests)."""
    handles: List[RemovableHandle]
    paired: List[torch.Tensor]
    applied: List[bool]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.compiler.disable
def split_input_gradient(model: nn.Module, conv_name: Optional[str], corrupted: torch.Tensor) -> InputGradientSplit:
    """Hook ``model``'s layer ``conv_name`` (from `find_input_conv`) for one forward on ``cat([corrupted, clean])``, to be appended to the
    result's ``paired`` list once built: the input gradient reaches ``corrupted`` directly, and none is computed for
    the clean half. Call `close()` after the forward."""
    paired: List[torch.Tensor] = []
    applied: List[bool] = []
    if conv_name is None or not corrupted.requires_grad:
        return InputGradientSplit([], paired, applied)
    conv = unwrap_model(model).get_submodule(conv_name)

    def detach_input(module, args):
        if not args or not paired or args[0] is not paired[0]:
            return None  # not the paired batch itself (e.g. normalised inside the model first): autograd as usual
        applied.append(True)
        return (args[0].detach(),) + tuple(args[1:])

    def add_corrupted_gradient(module, args, output):
        if len(applied) != 1 or len(paired) != 1:
            return None
        paired.append(output)  # marks the split as done: a second call of the layer is left alone
        return _CorruptedInputGradient.apply(
            output, corrupted, module.weight, module.stride, module.padding, module.dilation, module.groups)

    handles = [conv.register_forward_pre_hook(detach_input), conv.register_forward_hook(add_corrupted_gradient)]
    return InputGradientSplit(handles, paired, applied)
