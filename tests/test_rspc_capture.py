"""Finding and selecting blocks of any model, the patch grid, and the alignment hooks."""
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_rspc.method import PairedBlockDistance, find_blocks, find_patch_grid, parse_block_spec, select_blocks
from timm_rspc.method.alignment import mean_over_blocks


class Block(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.attn = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.attn(x)


class RVTLike(nn.Module):
    """RVT's official layout: transformers.<stage>.blocks.<i> with pools between the stages."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 4, 8, 8)
        self.patch_size = 8
        self.transformers = nn.ModuleList()
        for depth in (3, 2):
            stage = nn.Module()
            stage.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.transformers.append(stage)
        self.pools = nn.ModuleList([nn.Linear(4, 4)])


class FANLike(nn.Module):
    """FAN hybrid's layout: a ConvNeXt stem with its own blocks, FAN blocks, class-attention blocks."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.backbone = nn.Module()
        self.patch_embed.backbone.stages = nn.ModuleList([nn.Module()])
        self.patch_embed.backbone.stages[0].blocks = nn.Sequential(Block(), Block())
        self.patch_embed.img_size, self.patch_embed.grid_size, self.patch_embed.patch_size = (64, 64), (4, 4), (2, 2)
        self.blocks = nn.ModuleList([Block() for _ in range(4)])
        self.cls_attn_blocks = nn.ModuleList([Block(), Block()])


def test_find_blocks_of_each_layout():
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, depth=3)
    assert find_blocks(vit) == ['blocks.0', 'blocks.1', 'blocks.2']
    assert find_blocks(RVTLike()) == [f'transformers.0.blocks.{i}' for i in range(3)] + [
        'transformers.1.blocks.0', 'transformers.1.blocks.1']
    assert find_blocks(FANLike()) == [f'blocks.{i}' for i in range(4)]  # no stem, no class attention


def test_find_blocks_error_names_the_model():
    with pytest.raises(ValueError, match="Could not find the blocks of Sequential.*pattern.*modules are 0, 1"):
        find_blocks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    # where timm's feature_info names the stages, the hint is a selection that works
    regnet = timm.create_model('regnety_002', num_classes=10)
    with pytest.raises(ValueError, match=r"--rspc-blocks 's1\.\*,s2\.\*,s3\.\*,s4\.\*'") as error:
        find_blocks(regnet)
    spec = str(error.value).split("--rspc-blocks '")[1].split("'")[0]
    assert select_blocks(regnet, spec)[:2] == ['s1.b1', 's2.b1'] and len(select_blocks(regnet, spec)) == 13


def test_resnet_layer_pattern_with_grad_checkpointing_aligns_the_blocks():
    """timm's checkpointing calls a stage's blocks, not the stage: 'layer*' selects the blocks themselves."""
    from timm_rspc.method import RSPCTask
    resnet = timm.create_model('resnet10t', num_classes=10)
    resnet.set_grad_checkpointing(True)
    task = RSPCTask(resnet, img_size=64, blocks='layer*', verbose=False)
    assert task.alignment.block_names == ('layer1.0', 'layer2.0', 'layer3.0', 'layer4.0')
    out = task(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert torch.isfinite(out['align_loss']) and out['align_loss'] > 0


def test_select_blocks_by_index_slice_and_pattern():
    model = RVTLike()
    assert select_blocks(model, [0, -1]) == ['transformers.0.blocks.0', 'transformers.1.blocks.1']
    assert select_blocks(model, '3:') == ['transformers.1.blocks.0', 'transformers.1.blocks.1']
    # outermost match wins; a plain container stands for its blocks
    assert select_blocks(model, 'transformers.1.*') == ['transformers.1.blocks.0', 'transformers.1.blocks.1']
    assert select_blocks(model, 'transformers.1.blocks.*') == ['transformers.1.blocks.0', 'transformers.1.blocks.1']
    assert select_blocks(model, 'transformers.*.blocks.*.attn') == [
        f'transformers.{s}.blocks.{i}.attn' for s, d in ((0, 3), (1, 2)) for i in range(d)]
    # order follows the model, duplicates collapse
    assert select_blocks(model, [4, 'transformers.0.blocks.0', 0]) == [
        'transformers.0.blocks.0', 'transformers.1.blocks.1']
    # patterns also work where no default blocks exist
    cnn = nn.Sequential(OrderedDict(layer1=nn.Linear(2, 2), layer2=nn.Linear(2, 2), fc=nn.Linear(2, 2)))
    assert select_blocks(cnn, 'layer*') == ['layer1', 'layer2']


def test_select_blocks_errors():
    model = RVTLike()
    with pytest.raises(ValueError, match='Block index 5 is out of range: RVTLike has 5 blocks'):
        select_blocks(model, [5])
    with pytest.raises(ValueError, match="pattern 'blocks.*' matches no module of RVTLike; its blocks are"):
        select_blocks(model, 'blocks.*')
    with pytest.raises(ValueError, match='slice 7: selects none'):
        select_blocks(model, '7:')
    with pytest.raises(TypeError, match='must be an int, a slice or a str'):
        select_blocks(model, [1.5])


def test_parse_block_spec():
    assert parse_block_spec(None) is None and parse_block_spec('all') is None and parse_block_spec(' ') is None
    assert parse_block_spec('0, -1,8:,:2,blocks.1*') == [0, -1, slice(8, None), slice(None, 2), 'blocks.1*']


@pytest.mark.parametrize('name, kwargs, expected', [
    ('vit_tiny_patch16_224', dict(img_size=64), ((64, 64), 16)),  # the model's own patches
    ('vit_small_patch8_224', dict(img_size=64), ((64, 64), 8)),
    ('eva02_tiny_patch14_224', dict(img_size=56), ((56, 56), 14)),
    ('rvt_tiny_plus', dict(img_size=64), ((64, 64), 16)),  # conv stem: the token grid's stride
    ('swin_tiny_patch4_window7_224', dict(img_size=64, window_size=2), ((64, 64), 16)),  # 4 px tokens: 16
    ('pvt_v2_b0', dict(), ((224, 224), 16)),  # overlapping 7 px embedding with stride 4: 16
    ('pit_ti_224', dict(img_size=64), ((64, 64), 16)),  # overlapping 16 px embedding with stride 8: 16
    ('convnext_atto', dict(), ((224, 224), 16)),  # no patch embedding: 16
])
def test_find_patch_grid_of_each_family(name, kwargs, expected):
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    assert find_patch_grid(model) == expected


def test_find_patch_grid_rules_and_errors():
    assert find_patch_grid(FANLike()) == ((64, 64), 16)  # token-grid stride, not the last projection's patch size
    assert find_patch_grid(RVTLike(), img_size=32) == ((32, 32), 8)  # a non-overlapping conv embedding of 8 px
    assert find_patch_grid(RVTLike(), img_size=32, patch_size=4) == ((32, 32), 4)  # explicit wins
    assert find_patch_grid(nn.Sequential(nn.Conv2d(3, 4, 3)), img_size=48) == ((48, 48), 16)
    with pytest.raises(ValueError, match='Cannot find the input size of RVTLike'):
        find_patch_grid(RVTLike())
    with pytest.raises(ValueError, match=r"Input size 36x36 is not a multiple of the corruption model's 8 px patches "
                                         r"\(RSPC corrupts whole patches\): train at 32 or 40 px \(--img-size\)"):
        find_patch_grid(RVTLike(), img_size=36)
    with pytest.raises(ValueError, match='sizes must be positive, got image -32x-32, patch 8'):
        find_patch_grid(RVTLike(), img_size=-32)


def run_blocks(blocks):
    def forward(x):
        for block in blocks:
            x = block(x)
        return x
    return forward


def measured(alignment, forward, x):
    """One paired forward pass measured as `RSPCTrainableModule` does it: ``(output, align_loss)``."""
    recording = alignment.record()
    try:
        output = forward(x)
    finally:
        recording.close()
    return output, recording.measure()


def test_paired_distance_matches_explicit_forward():
    torch.manual_seed(0)
    model = RVTLike()
    blocks = [b for stage in model.transformers for b in stage.blocks]
    x = torch.randn(6, 5, 4)
    alignment = PairedBlockDistance(model, blocks=None)
    output, ours = measured(alignment, run_blocks(blocks), x)
    # reference: run the blocks by hand, MSE of the halves, sum / (count + 1e-4) as the authors do
    h, distances = x, []
    for block in blocks:
        h = block(h)
        distances.append(F.mse_loss(h[:3], h[3:]))
    torch.testing.assert_close(output, h, rtol=0, atol=0)
    torch.testing.assert_close(ours, sum(distances) / (len(distances) + 1e-4))
    torch.testing.assert_close(mean_over_blocks(distances, eps=0), torch.stack(distances).mean())
    # the model carries hooks only during the measured forward
    assert all(not b._forward_hooks for b in blocks)

    # a block skipped or run twice is an error, and the hooks come off all the same
    with pytest.raises(RuntimeError, match='of the 5 hooked blocks in this forward pass, recorded 1'):
        measured(alignment, blocks[0], x)
    with pytest.raises(RuntimeError, match='recorded 6'):
        measured(alignment, run_blocks(blocks + blocks[:1]), x)

    def failing_forward(batch):
        blocks[0](batch)
        raise RuntimeError('out of memory')

    with pytest.raises(RuntimeError, match='out of memory'):
        measured(alignment, failing_forward, x)
    assert all(not b._forward_hooks for b in blocks)


def test_odd_batch_is_an_error():
    model = RVTLike()
    alignment = PairedBlockDistance(model, blocks=[0])
    with pytest.raises(ValueError, match='need an even batch'):
        measured(alignment, model.transformers[0].blocks[0], torch.randn(3, 5, 4))


def test_recording_for_an_outside_forward():
    torch.manual_seed(0)
    model = RVTLike()
    blocks = [b for stage in model.transformers for b in stage.blocks]
    alignment = PairedBlockDistance(model, blocks=[1, -1])
    x = torch.randn(4, 5, 4)
    recording = alignment.record()
    assert len(blocks[1]._forward_hooks) == 1 and not blocks[0]._forward_hooks
    run_blocks(blocks)(x)
    torch.testing.assert_close(recording.measure(), measured(alignment, run_blocks(blocks), x)[1], rtol=0, atol=0)
    assert all(not b._forward_hooks for b in blocks)
    recording.close()  # idempotent


def test_reentrant_checkpointing_over_several_blocks_is_an_error():
    """Re-entrant checkpointing runs the inner blocks without autograd: their alignment would get no gradient."""
    from timm.models import checkpoint_seq
    torch.manual_seed(0)
    model = RVTLike()
    stage = model.transformers[0].blocks
    alignment = PairedBlockDistance(model, blocks='transformers.0.blocks.*')
    x = torch.randn(4, 5, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match='Block transformers.0.blocks.0 ran with autograd off.*TIMM_REENTRANT_CKPT'):
        measured(alignment, lambda batch: checkpoint_seq(stage, batch, every=3, use_reentrant=True), x)
    # the non-re-entrant kind (timm's default) measures the same loss and gradient as no checkpointing
    _, plain = measured(alignment, stage, x)
    grad, = torch.autograd.grad(plain, x)
    _, checkpointed = measured(
        alignment, lambda batch: checkpoint_seq(stage, batch, every=3, use_reentrant=False), x)
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(checkpointed, x)[0], grad, rtol=0, atol=0)
