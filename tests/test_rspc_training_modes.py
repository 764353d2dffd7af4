"""The RSPC step under the ways timm trains: activation checkpointing, torch.compile (inductor), channels_last, bf16
autocast and EMA. Each gives the loss and gradients of the plain eager fp32 step (exactly, or within the precision
the mode changes), because the alignment measurement is scoped to the paired forward and leaves nothing behind."""
import copy

import pytest
import timm
import torch
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3, unwrap_model

import timm_rspc  # noqa: F401  (registers RVT / FAN)
from timm_rspc.method import RSPCTask

IMG_SIZE = 64
FAMILIES = {
    'vit_tiny_patch16_224': dict(img_size=IMG_SIZE, depth=2),
    'rvt_tiny_plus': dict(img_size=IMG_SIZE),
    'fan_tiny_8_p4_hybrid': dict(img_size=IMG_SIZE, depth=2),
}


def make_model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **{**FAMILIES.get(name, {}), **kwargs})


def fixed_batch(size=4, img_size=IMG_SIZE):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(size, 3, img_size, img_size, generator=gen).clamp(-2, 2)
    target = torch.softmax(torch.randn(size, 10, generator=gen) * 2, dim=1)
    return x, target, torch.rand(x.shape, generator=gen)


def task_for(model, like=None):
    """An RSPC task on ``model``; with ``like``, C starts from that task's C (so two tasks differ only in mode)."""
    task = RSPCTask(model, SoftTargetCrossEntropy(), verbose=False)
    if like is not None:
        task.corruption_model.load_state_dict(like.corruption_model.state_dict())
    return task


def step(task, x, target, noise, autocast=False):
    """One forward and backward; ``autocast``: False, True (bfloat16) or a dtype."""
    dtype = autocast if isinstance(autocast, torch.dtype) else torch.bfloat16
    with torch.autocast('cpu', dtype=dtype, enabled=autocast is not False):
        out = task(x, target, noise=noise)
    out['loss'].backward()
    backbone = unwrap_model(task.get_eval_model())
    grads = {name: p.grad for name, p in backbone.named_parameters()}
    grads.update({f'C.{name}': p.grad for name, p in task.corruption_model.named_parameters()})
    return out, grads


def assert_same_step(a, b, rtol, atol):
    (out_a, grads_a), (out_b, grads_b) = a, b
    for key in ('loss', 'task_loss', 'align_loss', 'output'):
        torch.testing.assert_close(out_a[key], out_b[key], rtol=rtol, atol=atol, msg=key)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol, msg=name)


def no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize('name', list(FAMILIES))
def test_grad_checkpointing_gives_the_same_step(name):
    """The recomputation in backward runs without the alignment hooks and must do exactly what the forward did."""
    x, target, noise = fixed_batch()
    plain = task_for(make_model(name))
    checkpointed = task_for(make_model(name), like=plain)
    checkpointed.get_eval_model().set_grad_checkpointing(True)
    assert_same_step(step(checkpointed, x, target, noise), step(plain, x, target, noise), rtol=0, atol=0)


def test_grad_checkpointing_under_bf16_autocast_gives_the_same_step():
    x, target, noise = fixed_batch()
    plain = task_for(make_model('rvt_tiny_plus'))
    checkpointed = task_for(make_model('rvt_tiny_plus'), like=plain)
    checkpointed.get_eval_model().set_grad_checkpointing(True)
    assert_same_step(step(checkpointed, x, target, noise, autocast=True), step(plain, x, target, noise, autocast=True),
                     rtol=0, atol=0)


@pytest.mark.parametrize('name', ['rvt_tiny_plus', 'fan_tiny_8_p4_hybrid'])
def test_channels_last_gives_the_same_step(name):
    """channels_last model and input (timm's --channels-last). The corrupted images are the same; the convolutions'
    gradients round differently in that format, by up to 3e-5 here, as much as in plain classification training."""
    x, target, noise = fixed_batch()
    plain = task_for(make_model(name))
    model = make_model(name).to(memory_format=torch.channels_last)
    channels_last = task_for(model, like=plain)
    x_cl, noise_cl = x.to(memory_format=torch.channels_last), noise.to(memory_format=torch.channels_last)
    corrupted = channels_last.corruption(x_cl, noise=noise_cl).images
    assert corrupted.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(corrupted, plain.corruption(x, noise=noise).images, rtol=0, atol=0)
    assert_same_step(step(channels_last, x_cl, target, noise_cl), step(plain, x, target, noise), rtol=1e-4, atol=5e-5)


def test_bf16_autocast_step_is_the_fp32_step_to_bf16_precision():
    x, target, noise = fixed_batch()
    fp32 = task_for(make_model('vit_tiny_patch16_224'))
    bf16 = task_for(make_model('vit_tiny_patch16_224'), like=fp32)
    out_fp32, grads_fp32 = step(fp32, x, target, noise)
    out_bf16, grads_bf16 = step(bf16, x, target, noise, autocast=True)
    assert out_bf16['align_loss'].dtype == torch.float32  # per-block distances accumulate in float32
    for key in ('loss', 'task_loss', 'align_loss'):
        torch.testing.assert_close(out_bf16[key], out_fp32[key], rtol=3e-2, atol=1e-3, msg=key)
    for name, grad in grads_fp32.items():
        cosine = torch.nn.functional.cosine_similarity(grads_bf16[name].flatten(), grad.flatten(), dim=0)
        assert torch.isfinite(grads_bf16[name]).all() and cosine > 0.98, name


def _eager_and_inductor_tasks():
    """Two RSPC tasks on the same small ViT and C, the second compiled by inductor, and a batch for them."""
    import torch._dynamo
    torch._dynamo.reset()
    small = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    eager = task_for(make_model('vit_tiny_patch16_224', **small))
    compiled = task_for(make_model('vit_tiny_patch16_224', **small), like=eager)
    compiled.compile(backend='inductor')
    return eager, compiled, fixed_batch(img_size=32)


@pytest.mark.slow  # inductor's C++ compilation: 30-60 s on a 2-core CPU
def test_torch_compile_inductor_gives_the_eager_step():
    """The whole paired forward compiled by inductor (the hooks' registration is the one graph break)."""
    eager, compiled, (x, target, noise) = _eager_and_inductor_tasks()
    expected = step(eager, x, target, noise)
    assert_same_step(step(compiled, x, target, noise), expected, rtol=1e-4, atol=1e-6)
    assert no_hooks(unwrap_model(compiled.get_eval_model()))
    # a second step with other data reuses the compiled graph and hooks nothing stale
    x2, target2, noise2 = (t.flip(0) for t in (x, target, noise))
    for task in (eager, compiled):
        task.get_trainable_module().zero_grad()
        task.corruption_model.zero_grad()
    assert_same_step(step(compiled, x2, target2, noise2), step(eager, x2, target2, noise2), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # inductor's C++ compilation: 25-40 s each on a 2-core CPU
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_torch_compile_under_autocast_gives_the_eager_step(dtype):
    """The compiled paired forward under float16 / bfloat16 autocast (the input-gradient split included)."""
    eager, compiled, (x, target, noise) = _eager_and_inductor_tasks()
    assert_same_step(step(compiled, x, target, noise, dtype), step(eager, x, target, noise, dtype),
                     rtol=1e-2, atol=1e-3)


def test_ema_and_copies_never_carry_hooks():
    model = make_model('vit_tiny_patch16_224')
    task = task_for(model)
    x, target, noise = fixed_batch()
    seen_during_forward = []
    model.blocks[0].register_forward_pre_hook(lambda m, a: seen_during_forward.append(len(m._forward_hooks)))
    step(task, x, target, noise)
    assert seen_during_forward == [1]  # hooked while the paired forward ran, and only then
    assert no_hooks(model)
    ema = task.setup_ema(decay=0.5)
    user_ema = ModelEmaV3(model)  # e.g. built by a training script from the model itself
    for copied in (ema.module, user_ema.module, copy.deepcopy(model)):
        assert no_hooks(copied)
        assert copied(x[:3]).shape == (3, 10)  # an odd batch: nothing measures pairs here
