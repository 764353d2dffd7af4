"""RSPC on every timm architecture family.

`test_family_matrix`: each family, in a small configuration at a non-default input size, builds with the defaults
(C's patch size and grid, the blocks aligned: a recorded expectation per family, README's table), runs one step with
a finite loss, non-zero gradients for C and finite ones for every backbone parameter, and, where timm supports it,
gives the same step with gradient checkpointing.

`test_rspc_trains_each_family`: the classification loss falls on a fixed tiny batch, and C, updated alone, raises the
alignment loss on that batch (it ascends what the backbone descends).

C's gradient reaches it through a straight-through estimator over a discrete choice of patches (64 px, 16 patches,
2 corrupted), and at random initialisation, scaled by lambda = 0.005, it is small: C's learning rate here (3000, i.e.
lambda * lr = 15) is what makes one step change which patches C picks. One step along C's own (reversed) gradient
raises L_align on every family, and by more than one step in the opposite direction does.
"""
import pytest
import timm
import torch
from timm.loss import SoftTargetCrossEntropy

import timm_rspc  # noqa: F401  (registers RVT / FAN)
from timm_rspc.method import RSPCTask

# name -> (create_model kwargs, image size); small images where the model allows it
FAMILIES = {
    'vit_tiny_patch16_224': (dict(img_size=64, depth=4), 64),
    'deit_tiny_patch16_224': (dict(img_size=64, depth=4), 64),
    'rvt_tiny_plus': (dict(img_size=64), 64),
    'fan_tiny_8_p4_hybrid': (dict(img_size=64, depth=2), 64),
}


def fixed_batch(img_size, num_classes=10):
    """Four normalised images with one-hot targets, and fixed noise (so that only C's choice of patches varies)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, img_size, img_size, generator=gen).clamp(-2, 2)
    target = torch.nn.functional.one_hot(torch.arange(4) % num_classes, num_classes).float()
    return x, target, torch.rand(x.shape, generator=gen)


# name -> (create_model kwargs, input size, C's patch size, number of aligned blocks, first block, last block)
FAMILY_MATRIX = {
    'vit_tiny_patch16_224': (dict(img_size=64, depth=2), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'deit_tiny_distilled_patch16_224': (dict(img_size=64, depth=2), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'deit3_small_patch16_224': (dict(img_size=64, depth=2, embed_dim=64, num_heads=2), 64, 16, 2, 'blocks.0',
                                'blocks.1'),
    'vit_small_patch14_reg4_dinov2': (dict(img_size=56, depth=2, embed_dim=64, num_heads=2), 56, 14, 2, 'blocks.0',
                                      'blocks.1'),
    'beit_base_patch16_224': (dict(img_size=64, depth=2, embed_dim=64, num_heads=2), 64, 16, 2, 'blocks.0',
                              'blocks.1'),
    'eva02_tiny_patch14_224': (dict(img_size=56, depth=2), 56, 14, 2, 'blocks.0', 'blocks.1'),
    'cait_xxs24_224': (dict(img_size=64, depth=2), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'xcit_nano_12_p16_224': (dict(img_size=64, depth=2), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'convit_tiny': (dict(img_size=64, depth=2, local_up_to_layer=1), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'naflexvit_base_patch16_gap': (dict(depth=2, embed_dim=64, num_heads=2), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'rvt_tiny_plus': (dict(img_size=64), 64, 16, 12, 'blocks.0', 'blocks.11'),
    'fan_tiny_8_p4_hybrid': (dict(img_size=64, depth=2), 64, 16, 2, 'blocks.0', 'blocks.1'),
    'swin_tiny_patch4_window7_224': (
        dict(img_size=64, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 1, 2, 2), window_size=2), 64, 16, 4,
        'layers.0.blocks.0', 'layers.3.blocks.0'),
    'swinv2_tiny_window8_256': (
        dict(img_size=64, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 1, 2, 2), window_size=2), 64, 16, 4,
        'layers.0.blocks.0', 'layers.3.blocks.0'),
    'pvt_v2_b0': (dict(depths=(1, 1, 1, 1)), 64, 16, 4, 'stages.0.blocks.0', 'stages.3.blocks.0'),
    'pit_ti_224': (dict(img_size=64), 64, 16, 12, 'transformers.0.blocks.0', 'transformers.2.blocks.3'),
    'twins_svt_small': (dict(depths=(1, 1, 1, 1)), 64, 16, 4, 'blocks.0.0', 'blocks.3.0'),
    'coat_lite_tiny': (dict(img_size=64), 64, 16, 8, 'serial_blocks1.0', 'serial_blocks4.1'),
    'coat_tiny': (dict(img_size=64), 64, 16, 14, 'serial_blocks1.0', 'parallel_blocks.5'),
    'crossvit_tiny_240': (dict(depth=((1, 1, 0), (1, 1, 0))), 240, 16, 2, 'blocks.0', 'blocks.1'),
    'hiera_tiny_224': (dict(img_size=64), 64, 16, 12, 'blocks.0', 'blocks.11'),
    'mvitv2_tiny': (dict(img_size=64), 64, 16, 10, 'stages.0.blocks.0', 'stages.3.blocks.1'),
    'levit_128s': (dict(img_size=64), 64, 16, 9, 'stages.0.blocks.0', 'stages.2.blocks.3'),
    'maxvit_tiny_rw_224': (dict(img_size=64, depths=(1, 1, 1, 1)), 64, 16, 4, 'stages.0.blocks.0',
                           'stages.3.blocks.0'),
    'efficientformer_l1': (dict(depths=(1, 1, 1, 2)), 224, 16, 5, 'stages.0.blocks.0', 'stages.3.blocks.2'),
    'fastvit_t8': (dict(layers=(1, 1, 1, 1)), 64, 16, 4, 'stages.0.blocks.0', 'stages.3.blocks.0'),
    'convnext_atto': (dict(depths=(1, 1, 1, 1)), 64, 16, 4, 'stages.0.blocks.0', 'stages.3.blocks.0'),
    'resnet18': (dict(), 64, 16, 8, 'layer1.0', 'layer4.1'),
    'efficientnet_b0': (dict(), 64, 16, 16, 'blocks.0.0', 'blocks.6.0'),
}


def _step(task, x, target, noise):
    out = task(x, target, noise=noise)
    out['loss'].backward()
    grads = {name: p.grad for name, p in task.get_eval_model().named_parameters()}
    grads.update({f'C.{name}': p.grad for name, p in task.corruption_model.named_parameters()})
    return out, grads


@pytest.mark.parametrize('name', list(FAMILY_MATRIX))
def test_family_matrix(name):
    kwargs, img_size, patch_size, num_blocks, first, last = FAMILY_MATRIX[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    task = RSPCTask(model, SoftTargetCrossEntropy(), img_size=img_size, verbose=False)
    corruption = task.corruption_model
    assert (corruption.img_size, corruption.patch_size) == ((img_size, img_size), patch_size)
    assert corruption.grid_size == (img_size // patch_size,) * 2
    blocks = task.alignment.block_names
    assert (len(blocks), blocks[0], blocks[-1]) == (num_blocks, first, last)
    c_params = sum(p.numel() for p in corruption.parameters())
    assert c_params == 3 * patch_size ** 2 + corruption.num_patches ** 2

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, img_size, img_size, generator=gen).clamp(-2, 2)
    target = torch.softmax(torch.randn(2, 10, generator=gen), dim=1)
    noise = torch.rand(x.shape, generator=gen)
    out, grads = _step(task, x, target, noise)
    assert torch.isfinite(out['loss']) and out['align_loss'] > 0
    assert all(grads[n] is not None and torch.isfinite(grads[n]).all() for n in grads), 'a parameter got no gradient'
    assert all(grads[f'C.{n}'].abs().sum() > 0 for n, _ in corruption.named_parameters())

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError):
        return  # timm has no gradient checkpointing for this model
    task = RSPCTask(model, SoftTargetCrossEntropy(), img_size=img_size, verbose=False)
    task.corruption_model.load_state_dict(corruption.state_dict())
    checkpointed = _step(task, x, target, noise)
    for key in ('loss', 'align_loss'):
        torch.testing.assert_close(checkpointed[0][key], out[key], rtol=0, atol=0)
    for n, grad in grads.items():
        torch.testing.assert_close(checkpointed[1][n], grad, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_rspc_trains_each_family(name):
    kwargs, img_size = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    x, target, noise = fixed_batch(img_size)

    # C's step made large enough to change which patches it picks in one step (see the module docstring)
    task = RSPCTask(model, SoftTargetCrossEntropy(), corruption_lr=3000., corruption_momentum=0.,
                    corruption_weight_decay=0., corruption_clip_grad=None, verbose=False)
    assert len(task.alignment.block_names) >= 2

    # C alone (backbone fixed), one step each way from the same C: following its own (reversed) gradient C raises
    # the alignment loss on the batch, and by more than the opposite step does.
    def align_after_one_c_step(direction):
        task.corruption_model.load_state_dict(start)
        out = task(x, target, noise=noise)
        out['loss'].backward()
        for param in task.corruption_model.parameters():
            param.grad.mul_(direction)
        task.step_corruption_model()
        task.get_trainable_module().zero_grad()
        return out['align_loss'].item(), task(x, target, noise=noise)['align_loss'].item()

    start = {k: v.clone() for k, v in task.corruption_model.state_dict().items()}
    align_start, align_up = align_after_one_c_step(+1)
    _, align_down = align_after_one_c_step(-1)
    assert align_up > align_start and align_up > align_down

    # backbone training (C fixed): the classification loss on the fixed batch falls
    task.corruption_model.load_state_dict(start)
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-3)
    task_losses = []
    for _ in range(3):
        out = task(x, target, noise=noise)
        task_losses.append(out['task_loss'].item())
        out['loss'].backward()
        optimizer.step()
        optimizer.zero_grad()
        task.corruption_model.zero_grad()
    assert task_losses[-1] < task_losses[0]
