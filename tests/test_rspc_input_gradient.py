"""The paired forward computes the first layer's input gradient for the corrupted half only, and changes nothing
else: loss and every gradient (backbone and C) are bit-identical to the plain paired forward."""
import pytest
import torch
import torch.nn as nn

from timm_rspc.method.input_gradient import find_input_conv
from test_rspc_training_modes import FAMILIES, assert_same_step, fixed_batch, make_model, step, task_for


def _conv_inputs(task):
    """Whether the first convolution computed on an input that requires grad, per call (the clean half's waste)."""
    model = task.get_eval_model()
    conv = model.get_submodule(find_input_conv(model))
    seen = []
    # A forward hook sees the arguments the convolution ran on, after every pre-hook (the split's included).
    conv.register_forward_hook(lambda module, args, output: seen.append(args[0].requires_grad))
    return seen


@pytest.mark.parametrize('autocast', [False, torch.float16, torch.bfloat16], ids=['fp32', 'fp16', 'bf16'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_corrupted_half_input_gradient_only_and_the_same_step(name, autocast):
    """Also under float16 / bfloat16 autocast, where the convolution runs on 16-bit copies of input and weight."""
    x, target, noise = fixed_batch()
    plain = task_for(make_model(name))
    plain.get_trainable_module().input_conv_name = None  # the unsplit paired forward
    split = task_for(make_model(name), like=plain)
    assert split.get_trainable_module().input_conv_name == find_input_conv(split.get_eval_model()) is not None
    seen_plain, seen_split = _conv_inputs(plain), _conv_inputs(split)
    assert_same_step(
        step(split, x, target, noise, autocast), step(plain, x, target, noise, autocast), rtol=0, atol=0)
    assert seen_plain == [True] and seen_split == [False]
    conv = split.get_eval_model().get_submodule(find_input_conv(split.get_eval_model()))
    assert not conv._forward_pre_hooks and len(conv._forward_hooks) == 1  # only the recorder is left


class _ScaledInput(nn.Module):
    """A model that transforms its input before the first convolution: the split must stand aside."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.pretrained_cfg = inner.pretrained_cfg
        self.patch_embed = inner.patch_embed

    def forward(self, x):
        return self.inner(x * 0.5)


def test_input_transformed_inside_the_model_keeps_autograd_as_is():
    x, target, noise = fixed_batch()
    plain = task_for(_ScaledInput(make_model('vit_tiny_patch16_224')))
    plain.get_trainable_module().input_conv_name = None
    guarded = task_for(_ScaledInput(make_model('vit_tiny_patch16_224')), like=plain)
    assert guarded.get_trainable_module().input_conv_name == 'inner.patch_embed.proj'
    seen = _conv_inputs(guarded)
    assert_same_step(step(guarded, x, target, noise), step(plain, x, target, noise), rtol=0, atol=0)
    assert seen == [True]  # not the paired batch itself, so the convolution kept its input gradient


def test_find_input_conv_only_takes_a_plain_zero_padded_conv():
    assert find_input_conv(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3))) == '0'
    assert find_input_conv(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode='reflect'))) is None
    assert find_input_conv(nn.Sequential(nn.Linear(3, 4))) is None


def test_hook_splits_the_input_gradient_too():
    from timm_rspc.method import RSPCHook
    x, target, noise = fixed_batch()
    results = []
    for split in (False, True):
        model = make_model('rvt_tiny_plus')
        rspc = RSPCHook(model)
        if not split:
            rspc._input_conv = None
        if results:
            rspc.corruption_model.load_state_dict(results[0][2])
        seen = []
        model.get_submodule(find_input_conv(model)).register_forward_hook(
            lambda module, args, output: seen.append(args[0].requires_grad))
        paired, _ = rspc(x, target, noise=noise)
        output, align_loss = rspc.split(model(paired))
        (output.logsumexp(1).mean() + align_loss).backward()
        grads = [p.grad for p in [*model.parameters(), *rspc.corruption_model.parameters()]]
        results.append((seen, grads, rspc.corruption_model.state_dict()))
    (seen_plain, grads_plain, _), (seen_split, grads_split, _) = results
    assert seen_plain == [True] and seen_split == [False]
    for a, b in zip(grads_plain, grads_split):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
