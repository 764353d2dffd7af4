"""Finding and selecting blocks of any model, the patch grid, and the alignment hooks."""
import copy
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
    with pytest.raises(ValueError, match="Could not find the transformer blocks of Sequential.*pattern"):
        find_blocks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_select_blocks_by_index_slice_and_pattern():
    model = RVTLike()
    assert select_blocks(model, [0, -1]) == ['transformers.0.blocks.0', 'transformers.1.blocks.1']
    assert select_blocks(model, '3:') == ['transformers.1.blocks.0', 'transformers.1.blocks.1']
    assert select_blocks(model, 'transformers.1.*') == ['transformers.1.blocks']  # outermost match wins
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


def test_find_patch_grid():
    vit = timm.create_model('vit_tiny_patch16_224', img_size=64, depth=1)
    assert find_patch_grid(vit) == ((64, 64), 16)
    assert find_patch_grid(FANLike()) == ((64, 64), 16)  # token-grid stride, not the last projection's patch size
    assert find_patch_grid(RVTLike(), img_size=32) == ((32, 32), 8)
    with pytest.raises(ValueError, match='Cannot find the patch grid of Sequential'):
        find_patch_grid(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match='Cannot find the input size of RVTLike'):
        find_patch_grid(RVTLike())
    with pytest.raises(ValueError, match='Image size 36x36 is not divisible by the patch size 8'):
        find_patch_grid(RVTLike(), img_size=36)


def test_paired_distance_matches_explicit_forward():
    torch.manual_seed(0)
    model = RVTLike()
    blocks = [b for stage in model.transformers for b in stage.blocks]
    x = torch.randn(6, 5, 4)
    capture = PairedBlockDistance(model, blocks=None)
    capture.start()
    h = x
    for block in blocks:
        h = block(h)
    ours = capture.finish()
    # reference: run the blocks by hand, MSE of the halves, sum / (count + 1e-4) as the authors do
    h, distances = x, []
    for block in blocks:
        h = block(h)
        distances.append(F.mse_loss(h[:3], h[3:]))
    torch.testing.assert_close(ours, sum(distances) / (len(distances) + 1e-4))
    torch.testing.assert_close(mean_over_blocks(distances, eps=0), torch.stack(distances).mean())

    # not recording: the hooks do nothing; a block skipped or run twice is an error
    blocks[0](x)
    assert capture._distances == []
    capture.start()
    blocks[0](x)
    with pytest.raises(RuntimeError, match='of the 5 hooked blocks in this forward pass, recorded 1'):
        capture.finish()
    capture.remove()
    assert all(not b._forward_hooks for b in blocks)


def test_odd_batch_is_an_error():
    model = RVTLike()
    with PairedBlockDistance(model, blocks=[0]) as capture:
        capture.start()
        with pytest.raises(ValueError, match='need an even batch'):
            model.transformers[0].blocks[0](torch.randn(3, 5, 4))


def test_strip_from_copy_leaves_original_hooks():
    model = RVTLike()
    capture = PairedBlockDistance(model)
    clone = copy.deepcopy(model)
    capture.strip_from_copy(clone)
    assert all(not m._forward_hooks for m in clone.modules())
    assert len(model.transformers[0].blocks[0]._forward_hooks) == 1
