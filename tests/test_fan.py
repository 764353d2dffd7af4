"""FAN family: architecture facts, numerics vs the official code, timm citizenship, pretrained loading.

Full-size models are only built on the meta device (parameter counts); everything else uses tiny configs of the same
architectures (`TINY_*`), small images and a temporary torch hub cache.
"""
import argparse
import os
import re

import pytest
import torch
import torch.nn.functional as F

import timm
import timm.optim
import timm_rspc  # noqa: F401  (registers the models)
from timm_rspc.models import CheckpointError, CheckpointMismatchError
from timm_rspc.models import fan
from timm_rspc.models.fan import ConvNeXtLayerNorm2d, Fan, checkpoint_filter_fn

# Tiny versions of the two architectures (same code paths, a few thousand parameters).
TINY_VIT = dict(embed_dim=16, depth=2, num_heads=2)
TINY_HYBRID = dict(embed_dim=16, depth=2, num_heads=2, hybrid_depths=(1, 1), hybrid_dims=(8, 16))

# Parameter counts of the official models, built by the authors' code (FAN and RSPC repositories); issue #3.
OFFICIAL_PARAM_COUNTS = {
    ('fan_tiny_12_p16_224', 1000): 7_319_920,
    ('fan_small_12_p16_224', 1000): 28_345_336,
    ('fan_base_18_p16_224', 1000): 54_350_320,
    ('fan_large_24_p16_224', 1000): 80_574_100,
    ('fan_tiny_8_p4_hybrid', 1000): 7_467_240,
    ('fan_small_12_p4_hybrid', 1000): 26_117_944,
    ('fan_small_12_p4_hybrid', 10): 25_736_794,
    ('fan_small_12_p4_hybrid', 100): 25_771_444,
    ('fan_base_16_p4_hybrid', 1000): 50_475_048,
    ('fan_large_16_p4_hybrid', 1000): 76_855_140,
    ('fan_t_rspc', 1000): 7_467_240,
    ('fan_s_rspc', 1000): 26_117_944,
    ('fan_b_rspc', 1000): 50_475_048,
}

REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'fan_official_reference.pt')


def _tiny(name='fan_tiny_8_p4_hybrid', **kwargs):
    torch.manual_seed(0)
    arch = TINY_VIT if '_p16_' in name else TINY_HYBRID
    return timm.create_model(name, **{**arch, 'num_classes': 5, **kwargs})


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """A private, offline torch hub cache; returns its ``checkpoints`` folder."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    checkpoints = tmp_path / 'hub' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    yield checkpoints
    torch.hub.set_dir(old)


def _release_path(hub_checkpoints, name):
    return hub_checkpoints / os.path.basename(timm.models.get_pretrained_cfg(name).url)


# ---------------------------------------------------------------------------------------------------------- registry

@pytest.mark.parametrize('name,num_classes', list(OFFICIAL_PARAM_COUNTS))
def test_param_counts_equal_official(name, num_classes):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAM_COUNTS[(name, num_classes)]


def test_architecture_facts():
    with torch.device('meta'):
        small = timm.create_model('fan_small_12_p4_hybrid')
        large = timm.create_model('fan_large_16_p4_hybrid')
        vit = timm.create_model('fan_tiny_12_p16_224')
    assert len(small.blocks) == 10 and len(small.cls_attn_blocks) == 2  # "12" in the name, 10 FAN blocks
    assert [len(s.blocks) for s in small.patch_embed.backbone.stages] == [3, 3]
    assert [len(s.blocks) for s in large.patch_embed.backbone.stages] == [3, 5]
    assert len(large.blocks) == 22 and large.blocks[0].attn.num_heads == 10
    assert vit.embed_dim == 192 and vit.blocks[0].attn.num_heads == 4
    block = small.blocks[0]
    assert block.norm1.eps == 1e-6 and block.mlp.norm_v.eps == 1e-5 and block.attn.q.bias is not None
    assert isinstance(small.patch_embed.backbone.stem[1], ConvNeXtLayerNorm2d)


def test_pretrained_tags_and_aliases():
    pretrained = set(timm.list_pretrained('fan*'))
    for arch in ('fan_tiny_8_p4_hybrid', 'fan_small_12_p4_hybrid', 'fan_base_16_p4_hybrid'):
        assert {f'{arch}.rspc_in1k', f'{arch}.in1k'} <= pretrained
    assert {'fan_small_12_p4_hybrid.rspc_cifar10', 'fan_small_12_p4_hybrid.rspc_cifar100',
            'fan_base_16_p4_hybrid.in22k_ft_in1k_384', 'fan_large_16_p4_hybrid.in22k_ft_in1k',
            'fan_tiny_12_p16_224.in1k', 'fan_t_rspc.rspc_in1k', 'fan_s_rspc.rspc_in1k',
            'fan_b_rspc.rspc_in1k'} <= pretrained
    cfg = timm.models.get_pretrained_cfg
    assert cfg('fan_small_12_p4_hybrid').url.endswith('/v1.0/rspc_fan_small.pth.tar')  # RSPC is the default tag
    assert cfg('fan_s_rspc').url == cfg('fan_small_12_p4_hybrid.rspc_in1k').url
    assert cfg('fan_small_12_p4_hybrid.rspc_cifar100').url == \
        'https://github.com/guoyongcs/RSPC/releases/download/v1.1/rspc_fan_small_cifar100.pth.tar'
    assert cfg('fan_base_16_p4_hybrid.in1k').url == \
        'https://github.com/zhoudaquan/fully_attentional_network_ckpt/releases/download/v1.0.0/fan_hybrid_base.pth.tar'
    in1k = cfg('fan_tiny_8_p4_hybrid.rspc_in1k')
    assert (in1k.crop_pct, in1k.interpolation, in1k.mean, in1k.custom_load) == \
        (1.0, 'bicubic', timm.data.IMAGENET_DEFAULT_MEAN, True)
    assert 'ImageNet-1k top-1: 80.3' in in1k.notes
    cifar = cfg('fan_small_12_p4_hybrid.rspc_cifar10')
    assert cifar.num_classes == 10 and cifar.mean == fan.CIFAR10_MEAN
    assert cfg('fan_base_16_p4_hybrid.in22k_ft_in1k_384').input_size == (3, 384, 384)


# ---------------------------------------------------------------------------------------------------------- numerics

@pytest.mark.parametrize('arch', ['vit', 'hybrid'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_logits_match_official_code(arch, channels_last):
    """Logits of tiny official models (random weights, made with the authors' code) are reproduced."""
    reference = torch.load(REFERENCE, weights_only=True)
    case = reference[arch]
    name = 'fan_tiny_8_p4_hybrid' if arch == 'hybrid' else 'fan_tiny_12_p16_224'
    model = timm.create_model(name, **case['kwargs']).eval()
    model.load_state_dict(checkpoint_filter_fn(case['state_dict'], model))
    x = reference['input']
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = case['logits_channels_last' if channels_last else 'logits']
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


def test_layernorm2d_keeps_official_unbiased_branch():
    norm = ConvNeXtLayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 4)
    w, b = norm.weight[:, None, None], norm.bias[:, None, None]
    biased = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-6) * w + b
    unbiased = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=True, keepdim=True) + 1e-6) * w + b
    with torch.no_grad():
        torch.testing.assert_close(norm(x), biased)
        torch.testing.assert_close(norm(x.contiguous(memory_format=torch.channels_last)), unbiased)
        assert not torch.allclose(biased, unbiased, atol=1e-3)


def test_channel_processing_matches_formula():
    """Channel attention as the paper/official code define it, written out per head."""
    torch.manual_seed(0)
    cp = fan.ChannelProcessing(8, num_heads=2, qkv_bias=True).eval()
    with torch.no_grad():
        cp.temperature.uniform_(0.5, 2.0)
    x, H, W = torch.randn(2, 12, 8), 3, 4
    with torch.no_grad():
        v = cp.norm_v(cp.mlp_v(x, H, W))
        q = cp.q(x)
        expected = torch.empty_like(x)
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            key = x[..., cols].softmax(dim=1).mean(dim=-1)  # B, N
            gate = torch.sigmoid(torch.einsum('bnd,bn->bd', q[..., cols].softmax(dim=1), key)) * cp.temperature[h, 0]
            expected[..., cols] = v[..., cols] * gate[:, None, :]
        torch.testing.assert_close(cp(x, H, W), expected)


# ---------------------------------------------------------------------------------------------------------- timm API

@pytest.mark.parametrize('name', ['fan_tiny_12_p16_224', 'fan_tiny_8_p4_hybrid'])
def test_forward_backward_shapes(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 64, 48)
    features = model.forward_features(x)
    assert features.shape == (2, 1 + 4 * 3, 16)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    out = model(x)
    assert out.shape == (2, 5)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_hybrid_at_non_224_size_and_token_grid():
    model = _tiny('fan_tiny_8_p4_hybrid', img_size=224).eval()
    embed = model.patch_embed
    assert embed.patch_size == (16, 16) and embed.grid_size == (14, 14) and embed.num_patches == 196
    assert model.num_prefix_tokens == 0
    captured = []
    handles = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in model.blocks]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 160, 96))
    assert out.shape == (2, 5)
    grid = embed.dynamic_feat_size((160, 96))
    assert grid == (10, 6)
    assert [c.shape for c in captured] == [(2, 60, 16)] * len(model.blocks)
    for h in handles:
        h.remove()
    vit = _tiny('fan_tiny_12_p16_224')
    assert vit.patch_embed.dynamic_feat_size((40, 33)) == (3, 3)
    assert vit.patch_embed(torch.randn(1, 3, 40, 33))[1] == (3, 3)


def test_forward_intermediates_and_pruning():
    model = _tiny('fan_tiny_8_p4_hybrid').eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape for t in inter] == [(2, 16, 4, 3)] * 2
        nlc = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)
        torch.testing.assert_close(nlc[0].transpose(1, 2).reshape(2, 16, 4, 3), inter[0])
        assert model.prune_intermediate_layers(indices=[0]) == [0]
        assert len(model.blocks) == 1 and model.cls_attn_blocks is None
        assert model.forward_features(x).shape == (2, 12, 16)
        torch.testing.assert_close(model.forward_intermediates(x, intermediates_only=True)[0], inter[0])


def test_features_only():
    model = _tiny('fan_tiny_8_p4_hybrid', features_only=True, out_indices=(0, 1)).eval()
    assert model.feature_info.channels() == [16, 16] and model.feature_info.reduction() == [16, 16]
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 64, 48))
    assert [m.shape for m in maps] == [(2, 16, 4, 3)] * 2


def test_classifier_grad_checkpointing_and_param_groups():
    model = _tiny('fan_tiny_8_p4_hybrid')
    assert model.get_classifier() is model.head and model.head.out_features == 5
    model.reset_classifier(3, global_pool='avg')
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 16)
    assert model.no_weight_decay() == {'cls_token'}

    model = _tiny('fan_tiny_8_p4_hybrid', drop_path_rate=0.)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ref.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)

    # group_matcher drives layer-wise lr decay: stem, each FAN block, each class-attention block, then norm + head
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g['lr_scale'] for g in opt.param_groups for p in g['params']}
    scales = sorted(set(scale_of.values()))
    assert len(scales) == 1 + len(model.blocks) + len(model.cls_attn_blocks) + 1
    assert scale_of[id(model.patch_embed.backbone.stem[0].weight)] == scales[0]
    assert scale_of[id(model.blocks[0].gamma1)] == scales[1]
    assert scale_of[id(model.head.weight)] == scales[-1] == 1.0


def test_drop_path_is_constant():
    model = _tiny('fan_tiny_8_p4_hybrid', depth=3, drop_path_rate=0.2)
    assert [b.drop_path1.drop_prob for b in model.blocks] == [0.2] * 3


# ---------------------------------------------------------------------------------------------------------- loading

def _official_like_state_dict(name, seed=0, **kwargs):
    """A state dict with official key names, from a tiny model with random weights."""
    torch.manual_seed(seed)
    model = _tiny(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _containers(sd):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    return {
        'timm': {'epoch': 299, 'arch': 'fan', 'state_dict': sd, 'state_dict_ema': ema, 'optimizer': {},
                 'args': argparse.Namespace(model='fan', lr=2e-3), 'metric': 80.3, 'version': 2},
        'deit': {'model': sd, 'model_ema': ema, 'optimizer': {}, 'epoch': 299,
                 'args': argparse.Namespace(model='fan')},
        'ddp_bare': {f'module.{k}': v for k, v in sd.items()},
    }


@pytest.mark.parametrize('fmt', ['timm', 'deit', 'ddp_bare'])
@pytest.mark.parametrize('tag', ['fan_small_12_p4_hybrid.rspc_in1k', 'fan_tiny_12_p16_224.in1k'])
def test_pretrained_round_trip_from_hub_cache(hub_dir, fmt, tag):
    sd = _official_like_state_dict(tag.split('.')[0], num_classes=1000)
    torch.save(_containers(sd)[fmt], _release_path(hub_dir, tag))
    arch = TINY_VIT if '_p16_' in tag else TINY_HYBRID
    model = timm.create_model(tag, pretrained=True, **arch)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k  # non-EMA weights, unchanged
    assert model.pretrained_cfg['tag'] == tag.split('.')[1]


def test_pretrained_cifar_tag_and_alias(hub_dir):
    sd = _official_like_state_dict('fan_small_12_p4_hybrid', num_classes=10)
    torch.save(_containers(sd)['timm'], _release_path(hub_dir, 'fan_small_12_p4_hybrid.rspc_cifar10'))
    model = timm.create_model('fan_small_12_p4_hybrid.rspc_cifar10', pretrained=True, **TINY_HYBRID)
    assert model.num_classes == 10 and torch.equal(model.head.weight, sd['head.weight'])
    assert timm.data.resolve_data_config({}, model=model)['mean'] == fan.CIFAR10_MEAN

    sd = _official_like_state_dict('fan_small_12_p4_hybrid', seed=1, num_classes=1000)
    torch.save(_containers(sd)['deit'], _release_path(hub_dir, 'fan_s_rspc'))
    alias = timm.create_model('fan_s_rspc', pretrained=True, **TINY_HYBRID)
    assert torch.equal(alias.blocks[1].mlp.temperature, sd['blocks.1.mlp.temperature'])
    # timm's pretrained=True, num_classes=N keeps the new classifier and loads the rest
    fine_tune = timm.create_model('fan_s_rspc', pretrained=True, num_classes=3, **TINY_HYBRID)
    assert fine_tune.head.out_features == 3 and torch.equal(fine_tune.norm.weight, sd['norm.weight'])


def test_filter_handles_official_key_quirks():
    model = _tiny('fan_tiny_8_p4_hybrid')
    sd = model.state_dict()
    quirky = {}
    for k, v in sd.items():
        k = k.replace('pos_embed.', 'pos_embeder.')
        quirky[k] = v
    for i in range(len(model.cls_attn_blocks)):
        for p in ('weight', 'bias'):
            parts = [quirky.pop(f'cls_attn_blocks.{i}.attn.{n}.{p}') for n in 'qkv']
            quirky[f'cls_attn_blocks.{i}.attn.qkv.{p}'] = torch.cat(parts)
    filtered = checkpoint_filter_fn({'model': quirky}, model)
    assert filtered.keys() == sd.keys()
    for k in sd:
        assert torch.equal(filtered[k], sd[k]), k
    no_pos = _tiny('fan_tiny_8_p4_hybrid', use_pos_embed=False)
    assert not any(k.startswith('pos_embed') for k in checkpoint_filter_fn(dict(quirky), no_pos))


def test_bad_checkpoints_give_clear_errors(hub_dir, tmp_path):
    # weights of another variant
    torch.save({'state_dict': _official_like_state_dict('fan_tiny_12_p16_224', num_classes=1000)},
               _release_path(hub_dir, 'fan_tiny_8_p4_hybrid.rspc_in1k'))
    with pytest.raises(CheckpointMismatchError, match=r'missing keys .*patch_embed\.backbone'):
        timm.create_model('fan_tiny_8_p4_hybrid.rspc_in1k', pretrained=True, **TINY_HYBRID)
    # wrong width
    torch.save(_official_like_state_dict('fan_tiny_8_p4_hybrid', num_classes=1000, embed_dim=32),
               _release_path(hub_dir, 'fan_tiny_8_p4_hybrid.in1k'))
    with pytest.raises(CheckpointMismatchError, match=r'mis-shaped keys .*\(32,\) vs model \(16,\)'):
        timm.create_model('fan_tiny_8_p4_hybrid.in1k', pretrained=True, **TINY_HYBRID)
    # not a checkpoint / pickled objects are never unpickled
    _release_path(hub_dir, 'fan_base_16_p4_hybrid.in1k').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='This cached download is damaged .*: delete .* and download again'):
        timm.create_model('fan_base_16_p4_hybrid.in1k', pretrained=True, **TINY_HYBRID)
    torch.save({'model': _official_like_state_dict('fan_tiny_12_p16_224'), 'hook': F.relu},
               _release_path(hub_dir, 'fan_base_18_p16_224.in1k'))
    with pytest.raises(CheckpointError, match='never unpickles'):
        timm.create_model('fan_base_18_p16_224.in1k', pretrained=True, **TINY_VIT)
    # EMA weights asked of a file without them
    path = tmp_path / 'bare.pth'
    torch.save(_official_like_state_dict('fan_tiny_12_p16_224'), path)
    with pytest.raises(CheckpointError, match='no EMA weights'):
        timm_rspc.models.load_checkpoint(_tiny('fan_tiny_12_p16_224'), path, use_ema=True)


def test_is_a_timm_model_class():
    assert isinstance(_tiny('fan_t_rspc'), Fan)


@pytest.mark.parametrize('method', ['fx', 'hook'])
def test_token_attention_maps_are_extractable_with_timm(monkeypatch, method):
    from timm.layers import config, set_fused_attn
    from timm.utils import AttentionExtract
    monkeypatch.setattr(config, '_USE_FUSED_ATTN', config._USE_FUSED_ATTN)  # restored after the test
    set_fused_attn(False)
    explicit = Fan(img_size=64, num_classes=5, **TINY_HYBRID).eval()
    assert explicit.blocks[0].attn.fused_attn is False
    fused = Fan(img_size=64, num_classes=5, **TINY_HYBRID).eval()
    fused.load_state_dict(explicit.state_dict())
    for blk in fused.blocks:
        blk.attn.fused_attn = True
    x = torch.randn(2, 3, 64, 64)
    names = ['blocks.*.attn.softmax'] if method == 'fx' else ['blocks.*.attn.attn_drop']  # token attention only
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), fused(x), atol=1e-5, rtol=1e-5)
        maps = AttentionExtract(explicit, names=names, method=method)(x)
    assert list(maps) == [names[0].replace('*', str(i)) for i in range(2)]
    for m in maps.values():
        assert m.shape == (2, 2, 16, 16)  # (batch, heads, queries, keys): a 4x4 token grid at 64 px
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 2, 16))
    # block 0's map is softmax(q k^T / sqrt(d)) of its normalised input tokens
    block = explicit.blocks[0]
    with torch.no_grad():
        tokens = block.norm1(explicit._embed(x)[0])
        q = block.attn.q(tokens).reshape(2, 16, 2, 8).transpose(1, 2)
        k = block.attn.kv(tokens).reshape(2, 16, 2, 2, 8).permute(2, 0, 3, 1, 4)[0]
    torch.testing.assert_close(maps[names[0].replace('*', '0')], (q @ k.transpose(-2, -1) * 8 ** -0.5).softmax(-1))


@pytest.mark.parametrize('tag, file_classes, tag_classes', [
    ('fan_small_12_p4_hybrid.rspc_in1k', 10, 1000),   # a CIFAR-10 file under an ImageNet release name
    ('fan_small_12_p4_hybrid.rspc_cifar10', 1000, 10),  # and the reverse
])
def test_release_file_with_another_classifier_is_an_error(hub_dir, tag, file_classes, tag_classes):
    sd = _official_like_state_dict('fan_small_12_p4_hybrid', num_classes=file_classes)
    path = _release_path(hub_dir, tag)
    torch.save({'state_dict': sd}, path)
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            f"'{path}' has a classifier for {file_classes} classes (head.weight ({file_classes}, 16)), the model "
            f"one for {tag_classes} (head.weight ({tag_classes}, 16))")):
        timm.create_model(tag, pretrained=True, **TINY_HYBRID)
    # asked for explicitly: the file's own classifier, or a new one of another size
    model = timm.create_model(tag, pretrained=True, num_classes=file_classes, **TINY_HYBRID)
    assert torch.equal(model.head.weight, sd['head.weight'])
    model = timm.create_model(tag, pretrained=True, num_classes=7, **TINY_HYBRID)
    assert model.head.out_features == 7 and torch.equal(model.blocks[1].gamma1, sd['blocks.1.gamma1'])


def test_user_file_overlay_loads_the_non_ema_weights(tmp_path):
    sd = _official_like_state_dict('fan_tiny_8_p4_hybrid', num_classes=1000)
    path = tmp_path / 'my_run.pth.tar'
    torch.save(_containers(sd)['timm'], path)  # EMA weights differ from the non-EMA ones by 1
    model = timm.create_model('fan_tiny_8_p4_hybrid', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **TINY_HYBRID)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_device_dtype_torchscript_and_fx_like_timm():
    from timm.models import create_feature_extractor
    model = timm.create_model('fan_large_16_p4_hybrid', device='meta', dtype=torch.bfloat16)  # allocates nothing
    tensors = list(model.parameters()) + list(model.buffers())
    assert {t.device.type for t in tensors} == {'meta'}
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.bfloat16}
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for memory_format in (torch.contiguous_format, torch.channels_last):  # both LayerNorm2d branches
            xm = x.contiguous(memory_format=memory_format)
            expected = model(xm)
            torch.testing.assert_close(torch.jit.script(model)(xm), expected, rtol=0, atol=0)
            traced = create_feature_extractor(model, return_nodes=['head'])
            torch.testing.assert_close(traced(xm)['head'], expected, rtol=0, atol=0)
