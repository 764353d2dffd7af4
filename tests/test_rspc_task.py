"""RSPCTask: fidelity to a straightforward implementation, the C optimiser, AMP, accumulation, EMA, resume, args."""
import argparse
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.task import ClassificationTask
from timm.utils import NativeScaler

from timm_rspc.method import (
    PairedBlockDistance, PlainClassificationTask, RSPCHook, RSPCTask, RSPCTrainableModule, add_rspc_args,
    create_rspc_task,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # vit_tiny's normalisation: valid range [-1, 1]


def make_vit(seed=0, depth=3, img_size=64):
    torch.manual_seed(seed)
    return timm.create_model('vit_tiny_patch16_224', img_size=img_size, depth=depth, num_classes=10)


def reference_step(model, c_conv, c_fc, x, target, noise, ratio=0.1, lam=0.005):
    """RSPC written out directly (authors' formulation): returns loss terms, mask, corrupted batch, C's gradients."""
    batch, _, height, width = x.shape
    grid = (height // 16, width // 16)
    scores = c_fc(F.gelu(c_conv(x)).flatten(1))
    hard = (scores > torch.quantile(scores.float(), ratio, dim=1, keepdim=True)).float()
    # straight through, exactly 0 / 1 forward (its gradients stay inside [-1, 1] here, checked by the test)
    mask = hard + (scores - scores.detach())
    pixel_mask = F.interpolate(mask.view(batch, 1, *grid), scale_factor=16, mode='nearest')
    lower, upper = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    x_hat = torch.max(torch.min(x * pixel_mask + noise * (1 - pixel_mask), upper), lower)
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(torch.cat([x_hat, x])))))
    distances = []
    for block in model.blocks:
        h = block(h)
        distances.append(((h[:batch] - h[batch:]) ** 2).mean())
    align = sum(distances) / (len(distances) + 1e-4)
    logits = model.forward_head(model.norm(h))[batch:]
    task_loss = SoftTargetCrossEntropy()(logits, target)
    loss = task_loss + lam * align
    mask.retain_grad()
    loss.backward()
    return dict(loss=loss, task_loss=task_loss, align=align, logits=logits, hard=hard, x_hat=x_hat,
                mask_grad=mask.grad)


def batch(seed=1, size=4, img_size=64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 3, img_size, img_size, generator=gen) * 2 - 1
    target = torch.softmax(torch.randn(size, 10, generator=gen) * 2, dim=1)
    return x, target, torch.rand(x.shape, generator=gen)


def test_step_matches_straightforward_reference():
    model = make_vit()
    ref_model = copy.deepcopy(model)
    task = RSPCTask(model, SoftTargetCrossEntropy(), verbose=False)
    c = task.corruption_model
    c_conv = nn.Conv2d(3, 1, 16, 16, bias=False)
    c_fc = nn.Linear(16, 16, bias=False)
    c_conv.weight.data.copy_(c.patch_embed.weight)
    c_fc.weight.data.copy_(c.fc.weight)
    x, target, noise = batch()

    out = task(x, target, noise=noise)
    out['loss'].backward()
    ref = reference_step(ref_model, c_conv, c_fc, x, target, noise)

    assert ref['mask_grad'].abs().max() < 1  # so that hardtanh is the identity and the reference needs no clip
    corrupted = task.corruption(x, noise=noise)
    torch.testing.assert_close(corrupted.patch_mask, ref['hard'], rtol=0, atol=0)
    torch.testing.assert_close(corrupted.images, ref['x_hat'], rtol=0, atol=0)
    for key, ref_key in (('loss', 'loss'), ('task_loss', 'task_loss'), ('align_loss', 'align'), ('output', 'logits')):
        torch.testing.assert_close(out[key], ref[ref_key], rtol=0, atol=1e-5)
    torch.testing.assert_close(out['occluded_fraction'], 1 - ref['hard'].mean())
    for (name, p), p_ref in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-7, msg=name)
    # C ascends: its gradients are the reference's with the sign reversed
    torch.testing.assert_close(c.fc.weight.grad, -c_fc.weight.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(c.patch_embed.weight.grad, -c_conv.weight.grad, rtol=1e-5, atol=1e-9)


def test_outputs_are_tensors_and_c_is_outside_trainable_module():
    model = make_vit(depth=2)
    task = RSPCTask(model, nn.CrossEntropyLoss(), verbose=False)
    x, _, _ = batch()
    out = task(x, torch.tensor([0, 1, 2, 3]))
    assert set(out) == {'loss', 'output', 'task_loss', 'align_loss', 'occluded_fraction'}
    assert all(isinstance(v, torch.Tensor) for v in out.values()) and out['output'].shape == (4, 10)
    assert out['occluded_fraction'].item() == pytest.approx(2 / 16)  # rank 0.1 * 15 = 1.5 -> 2 of 16 patches
    trainable = {id(p) for p in task.get_trainable_module().parameters()}
    assert trainable == {id(p) for p in model.parameters()}
    assert not trainable & {id(p) for p in task.corruption_model.parameters()}
    assert task.get_eval_model() is model
    assert task.get_checkpoint_state()['state_dict'].keys() == model.state_dict().keys()


def test_bad_configuration_fails_early():
    model = make_vit(depth=1)
    with pytest.raises(ValueError, match=r'ratio \(--rspc-ratio\) must be a finite number in \(0, 1\), got 1.5'):
        RSPCTask(model, ratio=1.5, verbose=False)
    with pytest.raises(ValueError, match=r'align_weight \(--rspc-lambda\) must be a finite number >= 0, got -1'):
        RSPCTask(model, align_weight=-1, verbose=False)
    with pytest.raises(TypeError, match='Unknown RSPC setting.s. lamda; the settings are'):
        RSPCTask(model, lamda=0.1, verbose=False)
    with pytest.raises(ValueError, match=r'Input size 72x72 is not a multiple of .* 16 px patches .* 64 or 80 px'):
        RSPCTask(model, img_size=72, verbose=False)
    with pytest.raises(ValueError, match=r'patch_size \(--rspc-patch-size\) must be a whole number of pixels >= 1'):
        RSPCTask(model, patch_size=0, verbose=False)
    with pytest.raises(ValueError, match="pattern 'layer\\*' matches no module"):
        RSPCTask(model, blocks='layer*', verbose=False)
    with pytest.raises(ValueError, match=r"built for 176x176 inputs .*, got 64x64.*img_size=\(64, 64\) \(the train"):
        task = RSPCTask(timm.create_model('resnet10t', num_classes=10), verbose=False)  # C for the cfg's 176 px
        task(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))


def c_state(task):
    return [p.detach().clone() for p in task.corruption_model.parameters()]


def test_attached_optimizer_steps_c_with_the_authors_sgd():
    model = make_vit(depth=2)
    task = RSPCTask(model, SoftTargetCrossEntropy(), verbose=False)
    c = task.corruption_model
    reference = copy.deepcopy(c)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1e-4, momentum=0.9, nesterov=True, weight_decay=0.05)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    task.attach_optimizer(optimizer)
    x, target, noise = batch()
    for _ in range(2):
        task(x, target, noise=noise)['loss'].backward()
        for p, p_ref in zip(c.parameters(), reference.parameters()):
            p_ref.grad = p.grad.clone()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 5.0)
        ref_opt.step()
        optimizer.step()  # C steps through the post-hook
        optimizer.zero_grad()
        assert all(p.grad is None for p in c.parameters())
        for p, p_ref in zip(c.parameters(), reference.parameters()):
            torch.testing.assert_close(p, p_ref, rtol=0, atol=0)


def test_gradient_accumulation_steps_c_once_with_summed_gradients():
    x, target, noise = batch(size=4)
    results = []
    for micro_batches in (1, 2):
        task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), verbose=False)
        optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.0)
        task.attach_optimizer(optimizer)
        before = c_state(task)
        for chunk in range(micro_batches):
            part = slice(chunk * 4 // micro_batches, (chunk + 1) * 4 // micro_batches)
            (task(x[part], target[part], noise=noise[part])['loss'] / micro_batches).backward()
            assert all(torch.equal(a, b) for a, b in zip(before, c_state(task)))  # no step before the update
        optimizer.step()
        results.append(c_state(task))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_loss_scaler_unscales_before_clipping_and_skips_overflow():
    x, target, noise = batch()
    updates = []
    for scaled in (False, True):
        # C's unscaled gradient norm is ~6e-4 here: the clip at 1e-4 is active in both runs
        task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), corruption_clip_grad=1e-4, verbose=False)
        optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.0)
        # a small scale keeps the straight-through hardtanh inactive, as it is without scaling
        scaler = torch.amp.GradScaler('cpu', init_scale=16.0) if scaled else None
        task.attach_optimizer(optimizer, scaler)
        before = c_state(task)
        loss = task(x, target, noise=noise)['loss']
        if scaled:
            scaler.scale(loss).backward()  # clipping before unscaling would shrink C's step 16-fold
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        updates.append([b - a for a, b in zip(before, c_state(task))])
    for a, b in zip(*updates):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-13)
        assert a.abs().max() > 0

    # an overflow: GradScaler skips the main step, so C does not step either
    task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), verbose=False)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.0)
    scaler = NativeScaler(device='cpu')
    task.attach_optimizer(optimizer, scaler)
    before = c_state(task)
    scaler(task(x, target, noise=noise)['loss'] * float('inf'), optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, c_state(task)))


def test_normalize_clip_mode_makes_the_authors_fp16_update():
    """The authors clipped C's gradient at 5 while it was still multiplied by the fp16 loss scale (~65536): every C
    step was a step of gradient norm 5. ``normalize`` makes that update, here from an unscaled fp32 gradient."""
    x, target, noise = batch()
    task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), corruption_clip_mode='normalize', verbose=False)
    c = task.corruption_model
    reference = copy.deepcopy(c)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1e-4, momentum=0.9, nesterov=True, weight_decay=0.05)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.0)
    task.attach_optimizer(optimizer)
    task(x, target, noise=noise)['loss'].backward()
    # the authors' update: the gradient times a huge loss scale, clipped to norm 5
    for p, p_ref in zip(c.parameters(), reference.parameters()):
        p_ref.grad = p.grad * 65536.0
    assert torch.nn.utils.clip_grad_norm_(reference.parameters(), 5.0) > 5.0
    ref_opt.step()
    optimizer.step()
    for p, p_ref in zip(c.parameters(), reference.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match=r'set --rspc-clip-grad \(corruption_clip_grad\) > 0'):
        RSPCTask(make_vit(depth=2), corruption_clip_mode='normalize', corruption_clip_grad=0, verbose=False)
    with pytest.raises(ValueError, match=r"corruption_clip_mode \(--rspc-clip-mode\) must be one of norm, normalize"):
        RSPCTask(make_vit(depth=2), corruption_clip_mode='value', verbose=False)


def test_bf16_autocast_step_runs():
    task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), verbose=False)
    x, target, noise = batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = task(x, target, noise=noise)
    out['loss'].backward()
    assert out['align_loss'].dtype == torch.float32 and torch.isfinite(out['loss'])
    assert all(torch.isfinite(p.grad).all() for p in task.corruption_model.parameters())


def test_ema_covers_the_backbone_only():
    model = make_vit(depth=2)
    task = RSPCTask(model, SoftTargetCrossEntropy(), verbose=False)
    ema = task.setup_ema(decay=0.5)
    assert ema.module.state_dict().keys() == model.state_dict().keys()
    assert all(not m._forward_hooks for m in ema.module.modules())  # the alignment hooks stay on the live model
    x, target, noise = batch()
    task(x, target, noise=noise)['loss'].backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(p.grad)
    task.update_ema(step=10)
    first = next(iter(model.parameters()))
    assert not torch.equal(next(iter(ema.module.parameters())), first)
    assert task.get_task_state(ema=True) == {}
    assert task.get_checkpoint_state(ema=True)['state_dict_ema'].keys() == model.state_dict().keys()


def run_steps(task, optimizer, batches):
    for x, target, noise in batches:
        task(x, target, noise=noise)['loss'].backward()
        optimizer.step()
        optimizer.zero_grad()


def build(seed=0):
    task = RSPCTask(make_vit(seed, depth=2), SoftTargetCrossEntropy(), generator=torch.Generator().manual_seed(7),
                    verbose=False)
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-3)
    task.attach_optimizer(optimizer)
    return task, optimizer


def test_resume_continues_bit_identically(tmp_path):
    batches = [batch(seed)[:2] + (None,) for seed in range(4)]  # noise from the task's generator
    task, optimizer = build()
    run_steps(task, optimizer, batches)
    uninterrupted = [p.clone() for p in task.get_eval_model().parameters()] + c_state(task)

    task, optimizer = build()
    run_steps(task, optimizer, batches[:2])
    checkpoint = dict(task.get_checkpoint_state(), optimizer=optimizer.state_dict())
    torch.save(checkpoint, tmp_path / 'last.pth.tar')
    run_steps(task, optimizer, batches[2:])  # keep training the first task: the resumed one must not share state

    resumed, optimizer = build(seed=1)  # different initial weights, overwritten by the checkpoint
    loaded = torch.load(tmp_path / 'last.pth.tar', weights_only=True)
    resumed.load_checkpoint_state(loaded['state_dict'], loaded['task_state'])
    optimizer.load_state_dict(loaded['optimizer'])
    run_steps(resumed, optimizer, batches[2:])
    for a, b in zip(uninterrupted, [p for p in resumed.get_eval_model().parameters()] + c_state(resumed)):
        assert torch.equal(a, b)


def test_compiled_task_matches_eager():
    x, target, noise = batch()
    task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), verbose=False)
    eager = task(x, target, noise=noise)
    compiled_task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), verbose=False)
    compiled_task.corruption_model.load_state_dict(task.corruption_model.state_dict())
    compiled_task.compile(backend='eager')
    out = compiled_task(x, target, noise=noise)
    for key in ('loss', 'align_loss', 'output'):
        torch.testing.assert_close(out[key], eager[key])
    out['loss'].backward()
    assert compiled_task.get_eval_model()(x).shape == (4, 10)


def test_args_and_factory():
    parser = argparse.ArgumentParser()
    add_rspc_args(parser)
    defaults = parser.parse_args([])
    assert (defaults.rspc, defaults.rspc_ratio, defaults.rspc_lambda, defaults.rspc_blocks, defaults.rspc_noise) == (
        False, 0.1, 0.005, None, 'normalized')
    assert (defaults.rspc_opt, defaults.rspc_lr, defaults.rspc_momentum, defaults.rspc_weight_decay,
            defaults.rspc_clip_grad, defaults.rspc_clip_mode) == ('sgd', 1e-4, 0.9, 0.05, 5.0, 'norm')

    plain = create_rspc_task(defaults, make_vit(depth=1), nn.CrossEntropyLoss(), verbose=False)
    assert isinstance(plain, ClassificationTask) and isinstance(plain, PlainClassificationTask)
    optimizer = torch.optim.SGD(plain.get_trainable_module().parameters(), lr=0.1)
    assert plain.attach_optimizer(optimizer, None) is plain

    args = parser.parse_args(['--rspc', '--rspc-ratio', '0.2', '--rspc-lambda', '0.01', '--rspc-blocks', '-1',
                              '--rspc-noise', 'pixel', '--rspc-lr', '1e-3', '--rspc-clip-grad', '0'])
    args.mean, args.std, args.img_size, args.input_size = None, None, None, None
    task = create_rspc_task(args, make_vit(depth=3), nn.CrossEntropyLoss(), verbose=False)
    assert isinstance(task, RSPCTask)
    assert task.corruption_model.ratio == 0.2 and task.align_weight == 0.01
    assert task.alignment.block_names == ('blocks.2',) and task.corruption.noise_mode == 'pixel'
    assert task.corruption_optimizer.optimizer.param_groups[0]['lr'] == 1e-3
    assert task.corruption_optimizer.clip_grad is None
    normalized = create_rspc_task(
        parser.parse_args(['--rspc', '--rspc-clip-mode', 'normalize']), make_vit(depth=1), verbose=False)
    assert normalized.corruption_optimizer.clip_mode == 'normalize'
    group = task.corruption_optimizer.optimizer.param_groups[0]
    assert group['nesterov'] and group['momentum'] == 0.9 and group['weight_decay'] == 0.05
    torch.testing.assert_close(task.corruption.lower.flatten(), -torch.ones(3))  # vit_tiny: mean = std = 0.5


def test_hook_matches_task():
    x, target, noise = batch()
    task = RSPCTask(make_vit(depth=2), SoftTargetCrossEntropy(), verbose=False)
    model = make_vit(depth=2)
    rspc = RSPCHook(model)
    rspc.corruption_model.load_state_dict(task.corruption_model.state_dict())
    out = task(x, target, noise=noise)
    paired, paired_target = rspc(x, target, noise=noise)
    assert paired_target is target and paired.shape[0] == 2 * x.shape[0]
    output, align_loss = rspc.split(model(paired))
    loss = rspc.loss(SoftTargetCrossEntropy()(output, target), align_loss)
    torch.testing.assert_close(loss, out['loss'])
    torch.testing.assert_close(rspc.occluded_fraction, out['occluded_fraction'])
    loss.backward()
    out['loss'].backward()
    for a, b in zip(rspc.corruption_model.parameters(), task.corruption_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    rspc.step()
    assert all(p.grad is None for p in rspc.corruption_model.parameters())
    rspc.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_hook_hooks_the_model_only_between_call_and_split():
    model = make_vit(depth=2)
    rspc = RSPCHook(model)
    x, target, noise = batch()
    with pytest.raises(RuntimeError, match=r'split needs a paired forward pass: call rspc\(x, target\)'):
        rspc.split(model(x))
    rspc(x, target, noise=noise)  # abandoned (e.g. the forward raised): the next call replaces its hooks
    paired, _ = rspc(x, target, noise=noise)
    assert [len(block._forward_hooks) for block in model.blocks] == [1, 1]
    output, align_loss = rspc.split(model(paired))
    assert all(not m._forward_hooks for m in model.modules())
    expected = RSPCTrainableModule(model, PairedBlockDistance(model))(x, rspc.corruption(x, noise=noise).images)
    torch.testing.assert_close((output, align_loss), expected, rtol=0, atol=0)


def test_log_line_names_the_grid_and_one_block(caplog):
    with caplog.at_level('INFO', logger='timm_rspc.method.task'):
        RSPCTask(make_vit(depth=2), blocks=-1)
    assert 'corruption grid 4x4 of 16 px patches, aligning 1 block (blocks.1), C optimiser' in caplog.text


def test_ddp_with_timm_train_py_kwargs_warns_nothing(tmp_path):
    """timm's train.py calls prepare_distributed(broadcast_buffers=True); newer torch deprecates that argument."""
    import warnings
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0, world_size=1)
    try:
        task = RSPCTask(make_vit(depth=1), verbose=False)
        with warnings.catch_warnings():
            warnings.simplefilter('error', FutureWarning)
            task.prepare_distributed(device_ids=None, broadcast_buffers=True)
        assert getattr(task.get_trainable_module(), 'forward_sync_buffers', True) is True  # older torch: no such argument
    finally:
        dist.destroy_process_group()
