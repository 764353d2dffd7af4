"""RVT / RVT* models: architecture facts, the timm model API, and loading release checkpoints through timm.

Logit equality with the authors' own model code is verified outside the test suite (their code is not vendored);
here the official key naming is reproduced from its known facts (``transformers.{stage}.blocks.{i}``,
``patch_embed.proj.{0,1,3}``, ``attn.att_mask``, ``attn.patch_reasoning``, ``pools.{stage}.conv``).
"""
import argparse
import os
import re

import pytest
import timm
import torch
from timm.data import resolve_data_config, resolve_input_data_config
from timm.models import get_pretrained_cfg
from timm.models import group_parameters

import timm_rspc  # noqa: F401
from timm_rspc.models import CheckpointError, CheckpointMismatchError, load_checkpoint
from timm_rspc.models.rvt import RVT, RvtAttention, resample_attn_scale

OFFICIAL_PARAM_COUNTS = {
    'rvt_tiny': 8_646_376,
    'rvt_tiny_plus': 10_951_336,
    'rvt_small': 22_148_392,
    'rvt_small_plus': 23_300_872,
    'rvt_base': 86_223_784,
    'rvt_base_plus': 88_528_744,
}


def _small_rvt(**kwargs):
    """Two-stage RVT* at 64x64 input (4x4 tokens, 2x2 after the pool): every code path, a fraction of the cost."""
    args = dict(img_size=64, embed_dims=(32, 64), depths=(2, 1), num_heads=(2, 4), num_scaled_blocks=1,
                num_classes=7)
    return RVT(**dict(args, **kwargs))


def _randomize(model, seed):
    """Random weights *and* BN statistics and scaling maps, so that a wrong or skipped tensor changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith('num_batches_tracked'):
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith('attn_scale'):
                t.copy_(2 * noise)
            elif name.endswith('running_var'):
                t.copy_(noise.abs() + 0.5)
            else:
                t.add_(0.05 * noise)
    return model.eval()


def _to_official(state_dict, depths):
    """Rename native keys to the naming of the authors' code (the inverse of what checkpoint_filter_fn undoes)."""
    starts = [sum(depths[:s]) for s in range(len(depths))]
    out = {}
    for k, v in state_dict.items():
        m = re.match(r'blocks\.(\d+)\.(.*)', k)
        if m:
            i, rest = int(m[1]), m[2]
            stage = max(s for s, start in enumerate(starts) if start <= i)
            rest = rest.replace('attn.attn_scale', 'attn.att_mask')
            rest = rest.replace('attn.qkv.conv1.', 'attn.patch_reasoning.0.')
            rest = rest.replace('attn.qkv.conv2.', 'attn.patch_reasoning.2.')
            k = f'transformers.{stage}.blocks.{i - starts[stage]}.{rest}'
        elif k.startswith('pools.'):
            _, first_block, rest = k.split('.', 2)
            k = f'pools.{starts.index(int(first_block)) - 1}.{rest}'
        elif k.startswith('patch_embed.'):
            _, name, rest = k.split('.', 2)
            k = f"patch_embed.proj.{dict(conv1='0', norm='1', proj='3')[name]}.{rest}"
        out[k] = v
    return out


@pytest.fixture
def hub_dir(tmp_path):
    """A temporary torch hub dir: timm's download cache is ``<hub>/checkpoints/<release filename>``."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    yield tmp_path / 'hub' / 'checkpoints'
    torch.hub.set_dir(old)


@pytest.fixture(scope='module')
def tiny_plus_pair():
    """Two differently randomised rvt_tiny_plus models (weights and 'EMA' weights) and a batch of inputs."""
    plain = _randomize(timm.create_model('rvt_tiny_plus'), seed=1)
    ema = _randomize(timm.create_model('rvt_tiny_plus'), seed=2)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return plain, ema, x, plain(x), ema(x)


# --- architecture ---

@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAM_COUNTS))
def test_parameter_counts_match_the_official_models(name):
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAM_COUNTS[name]


def test_registered_models_and_tags():
    assert set(timm.list_models('rvt_*')) >= set(OFFICIAL_PARAM_COUNTS) | {'rvt_ti_rspc', 'rvt_s_rspc', 'rvt_b_rspc'}
    assert set(timm.list_models('rvt_*', pretrained=True)) == {
        'rvt_tiny_plus.rspc_in1k', 'rvt_small_plus.rspc_in1k', 'rvt_base_plus.rspc_in1k',
        'rvt_small_plus.rspc_cifar10', 'rvt_small_plus.rspc_cifar100',
        'rvt_ti_rspc.rspc_in1k', 'rvt_s_rspc.rspc_in1k', 'rvt_b_rspc.rspc_in1k',
    }
    releases = 'https://github.com/guoyongcs/RSPC/releases/download/'
    for alias, arch, file in (('rvt_ti_rspc', 'rvt_tiny_plus', 'v1.0/rspc_rvt_tiny.pth.tar'),
                              ('rvt_s_rspc', 'rvt_small_plus', 'v1.0/rspc_rvt_small.pth.tar'),
                              ('rvt_b_rspc', 'rvt_base_plus', 'v1.0/rspc_rvt_base.pth.tar')):
        cfg = get_pretrained_cfg(alias)  # the alias' default tag
        assert cfg.tag == 'rspc_in1k' and cfg.url == get_pretrained_cfg(f'{arch}.rspc_in1k').url == releases + file
        assert cfg.custom_load and cfg.license and cfg.paper_name and cfg.origin_url
        assert 'ImageNet-1k top-1: 79.5' in get_pretrained_cfg('rvt_ti_rspc').notes


@pytest.mark.parametrize('tag, classes, mean, top1', [
    ('rspc_cifar10', 10, 0.49139968, 'CIFAR-10 top-1: 97.73'),
    ('rspc_cifar100', 100, 0.5070751592371323, 'CIFAR-100 top-1: 84.81'),
])
def test_cifar_tags(tag, classes, mean, top1):
    cfg = get_pretrained_cfg(f'rvt_small_plus.{tag}')
    assert cfg.url.endswith(f'v1.1/rspc_rvt_small_{tag[5:]}.pth.tar')
    assert cfg.num_classes == classes and top1 in cfg.notes
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    assert data['input_size'] == (3, 224, 224) and data['crop_pct'] == 0.875 and data['mean'][0] == mean


def test_forward_backward_shapes_and_batch_of_one():
    model = _small_rvt()
    x = torch.randn(3, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 7)
    out.square().sum().backward()
    assert x.grad.shape == x.shape
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert model.eval()(x[:1]).shape == (1, 7)  # the authors' head squeezes this to (7,)
    assert model.forward_features(x).shape == (3, 4, 64)  # 2x2 tokens after the pool
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (3, 64)


def test_registered_model_batch_of_one(tiny_plus_pair):
    plain, _, x, logits, _ = tiny_plus_pair
    with torch.no_grad():
        one = plain(x[:1])
    assert one.shape == (1, 1000)
    torch.testing.assert_close(one, logits[:1], atol=1e-5, rtol=1e-5)


def test_fused_attention_matches_explicit_attention():
    model = _randomize(_small_rvt(num_scaled_blocks=0), seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        for blk in model.blocks:
            blk.attn.fused_attn = False
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_attention_scaling_multiplies_the_logits_by_the_sigmoid_of_the_map():
    model = _randomize(_small_rvt(num_scaled_blocks=1), seed=0)
    attn = model.blocks[0].attn
    tokens = torch.randn(2, 16, 32)
    with torch.no_grad():
        scaled = attn(tokens, (4, 4))
        # reference: softmax(q k^T / sqrt(d) * sigmoid(map)) v, written out
        q, k, v = attn.qkv(tokens, (4, 4)).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * 16 ** -0.5 * attn.attn_scale.sigmoid()).softmax(-1)
        expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 16, 32))
        torch.testing.assert_close(scaled, expected, atol=1e-6, rtol=1e-5)
        attn.attn_scale.fill_(40.)  # sigmoid == 1: plain attention
        plain = RvtAttention(32, 2)
        plain.load_state_dict({k: v for k, v in attn.state_dict().items() if k != 'attn_scale'})
        torch.testing.assert_close(attn(tokens, (4, 4)), plain(tokens, (4, 4)), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(scaled, plain(tokens, (4, 4)), atol=1e-3)


def test_features_only():
    model = timm.create_model('rvt_tiny', features_only=True, out_indices=(4, 9, 11))
    assert model.feature_info.channels() == [192, 192, 384]
    assert model.feature_info.reduction() == [16, 16, 32]
    features = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in features] == [(1, 192, 14, 14), (1, 192, 14, 14), (1, 384, 7, 7)]


def test_forward_intermediates_and_pruning():
    model = _randomize(_small_rvt(), seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(model.forward_head(final), model(x))
        assert [tuple(t.shape) for t in intermediates] == [(2, 32, 4, 4), (2, 32, 4, 4), (2, 64, 2, 2)]
        nlc = model.forward_intermediates(x, indices=[1], output_fmt='NLC', intermediates_only=True)
        torch.testing.assert_close(nlc[0], intermediates[1].flatten(2).transpose(1, 2))
        # norm=True normalises where the final norm fits: the last stage's 64 channels, not the first stage's 32
        first, last = model.forward_intermediates(x, indices=[0, 2], norm=True, intermediates_only=True)
        torch.testing.assert_close(first, intermediates[0])
        expected = model.norm(intermediates[2].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 64, 2, 2)
        torch.testing.assert_close(last, expected)
        kept = model.prune_intermediate_layers(indices=[1])
        assert kept == [1] and len(model.blocks) == 2 and len(model.pools) == 0
        assert isinstance(model.head, torch.nn.Identity)
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0],
                                   intermediates[1])


def test_classifier_api_and_parameter_groups():
    model = _small_rvt()
    assert model.get_classifier() is model.head and model.num_features == 64
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    assert model.no_weight_decay() == set()
    group_of = {name: gid for gid, names in group_parameters(model, model.group_matcher()).items() for name in names}
    assert group_of['pools.2.conv.weight'] == group_of['blocks.2.attn.qkv.weight']  # a pool goes with its block
    assert group_of['patch_embed.conv1.weight'] < group_of['blocks.0.norm1.weight'] < group_of['blocks.1.norm1.weight']
    assert group_of['norm.weight'] == group_of['blocks.2.mlp.fc1.weight']  # timm: final norm with the last block


def test_grad_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    model = _small_rvt()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[n], msg=n)


# --- input sizes ---

def test_plus_model_refuses_other_input_sizes_naming_the_required_size():
    model = _small_rvt()
    with pytest.raises(ValueError, match=r'needs 64x64 input.*Got 96x96 input.*img_size=\(96, 96\).*dynamic_img_size'):
        model(torch.randn(1, 3, 96, 96))
    plain = _small_rvt(num_scaled_blocks=0)
    assert plain(torch.randn(1, 3, 96, 128)).shape == (1, 7)  # no scaling map: any size, non-square too


def test_input_config_follows_the_model():
    """timm's scripts resolve input sizes with resolve_input_data_config: RVT* is fixed-size, RVT is not."""
    config = resolve_input_data_config
    assert config(timm.create_model('rvt_tiny_plus', img_size=256))['input_size'] == (3, 256, 256)
    with pytest.raises(ValueError, match=r'requires \(224, 224\)'):
        config(timm.create_model('rvt_tiny_plus'), args={'input_size': (3, 288, 288)})
    for model in (timm.create_model('rvt_tiny'), timm.create_model('rvt_tiny_plus', dynamic_img_size=True)):
        assert config(model, args={'input_size': (3, 288, 288)})['input_size'] == (3, 288, 288)


def test_dynamic_img_size_resamples_the_scaling_maps():
    model = _randomize(_small_rvt(dynamic_img_size=True), seed=0)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 96)).shape == (2, 7)


def test_resample_attn_scale():
    heads_map = torch.randn(3, 16, 16)
    assert resample_attn_scale(heads_map, (4, 4), (4, 4)) is heads_map
    constant = torch.full((2, 16, 16), 0.7)
    torch.testing.assert_close(resample_attn_scale(constant, (4, 4), (6, 6)), torch.full((2, 36, 36), 0.7))
    # query i, key j depends only on their rows: resampling preserves the structure along each axis
    rows = torch.arange(4.).repeat_interleave(4)
    structured = (rows[:, None] - rows[None, :]).expand(1, 16, 16)
    resampled = resample_attn_scale(structured, (4, 4), (2, 4))
    assert resampled.shape == (1, 8, 8)
    assert torch.allclose(resampled[0, 0], resampled[0, 1])  # same query row -> same key profile


# --- checkpoints through timm's pretrained=True ---

def _containers(plain, ema, official):
    """Release container formats, holding differently randomised 'EMA' weights to catch a wrong choice."""
    depths = (10, 2)
    sd, sd_ema = plain.state_dict(), ema.state_dict()
    if official:
        sd, sd_ema = _to_official(sd, depths), _to_official(sd_ema, depths)
    args = argparse.Namespace(model='rvt_tiny_plus_afat', lr=5e-4, epochs=300)
    return {
        'timm_train': {'state_dict': sd, 'state_dict_ema': sd_ema, 'arch': 'rvt_tiny_plus', 'epoch': 299,
                       'args': args, 'metric': 79.5},
        'deit_style': {'model': sd, 'model_ema': sd_ema, 'epoch': 299, 'args': args,
                       'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5}]}},
        'ddp_prefixed': {'state_dict': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 1},
        'bare': sd,
    }


def _assert_same_weights(model, reference):
    expected = reference.state_dict()
    actual = model.state_dict()
    assert set(actual) == set(expected)
    different = [k for k, v in expected.items() if not torch.equal(actual[k], v)]
    assert not different, different


@pytest.mark.parametrize('official', [True, False], ids=['official_keys', 'native_keys'])
@pytest.mark.parametrize('fmt', ['timm_train', 'deit_style', 'ddp_prefixed', 'bare'])
def test_release_container_round_trip_from_the_hub_cache(hub_dir, tiny_plus_pair, fmt, official):
    plain, ema, *_ = tiny_plus_pair
    torch.save(_containers(plain, ema, official)[fmt], hub_dir / 'rspc_rvt_tiny.pth.tar')
    model = timm.create_model('rvt_ti_rspc', pretrained=True)  # offline: the file is already cached
    _assert_same_weights(model, plain)  # every tensor, non-EMA


def test_released_checkpoint_gives_the_logits_of_the_model_that_wrote_it(hub_dir, tiny_plus_pair):
    plain, ema, x, logits, ema_logits = tiny_plus_pair
    torch.save(_containers(plain, ema, official=True)['timm_train'], hub_dir / 'rspc_rvt_tiny.pth.tar')
    model = timm.create_model('rvt_tiny_plus.rspc_in1k', pretrained=True).eval()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, ema_logits, atol=1e-2)


def test_official_key_names(tiny_plus_pair):
    names = set(_to_official(tiny_plus_pair[0].state_dict(), (10, 2)))
    for key in ('patch_embed.proj.0.weight', 'patch_embed.proj.1.running_var', 'patch_embed.proj.3.bias',
                'transformers.0.blocks.9.attn.att_mask', 'transformers.1.blocks.1.mlp.bn3.running_mean',
                'transformers.1.blocks.0.attn.qkv.weight', 'pools.0.conv.weight', 'norm.weight', 'head.bias'):
        assert key in names, key
    assert not any('att_mask' in k for k in names if k.startswith('transformers.1.'))


def test_afat_checkpoint_loads_into_the_model_built_with_its_layout(tmp_path):
    # An *_afat checkpoint (conv q/k/v in every block) whose scaling maps sit in 3 blocks, not the published 10.
    source = _randomize(timm.create_model('rvt_tiny', num_scaled_blocks=3, conv_qkv=True), seed=3)
    path = tmp_path / 'rvt_tiny_plus_afat.pth.tar'
    torch.save({'state_dict': _to_official(source.state_dict(), (10, 2))}, path)
    assert 'transformers.1.blocks.1.attn.patch_reasoning.2.weight' in torch.load(path)['state_dict']
    overlay = dict(file=str(path))
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            f"'{path}': the weights have another attention layout than the model: num_scaled_blocks=3, "
            "conv_qkv=True in the weights, num_scaled_blocks=10, conv_qkv=False in the model. Build the matching "
            "model: timm.create_model('rvt_tiny_plus', num_scaled_blocks=3, conv_qkv=True)")):
        timm.create_model('rvt_tiny_plus', pretrained=True, pretrained_cfg_overlay=overlay)
    model = timm.create_model('rvt_tiny_plus', pretrained=True, pretrained_cfg_overlay=overlay,
                              num_scaled_blocks=3, conv_qkv=True).eval()
    assert model.scaled_blocks == (0, 1, 2) and model.conv_qkv
    _assert_same_weights(model, source)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=1e-5, rtol=1e-5)


def test_loading_never_changes_the_model_it_loads_into(tmp_path):
    source = _randomize(_small_rvt(num_scaled_blocks=0, scaled_blocks=(1,)), seed=4)  # a map in block 1 only
    torch.save({'model': _to_official(source.state_dict(), (2, 1))}, tmp_path / 'official.pth')
    model = _small_rvt(num_scaled_blocks=2)
    modules = list(model.modules())
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            'scaled_blocks=(1,), conv_qkv=False in the weights, num_scaled_blocks=2, conv_qkv=False in the model. '
            'Build the matching model: RVT(..., scaled_blocks=(1,), conv_qkv=False)')):
        load_checkpoint(model, tmp_path / 'official.pth')
    assert list(model.modules()) == modules and model.scaled_blocks == (0, 1)
    model = load_checkpoint(_small_rvt(num_scaled_blocks=0, scaled_blocks=(1,)), tmp_path / 'official.pth').eval()
    _assert_same_weights(model, source)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_checkpoint_for_another_input_size_and_classes(hub_dir, tiny_plus_pair):
    plain, ema, *_ = tiny_plus_pair
    torch.save({'state_dict': _to_official(plain.state_dict(), (10, 2))}, hub_dir / 'rspc_rvt_tiny.pth.tar')
    model = timm.create_model('rvt_ti_rspc', pretrained=True, img_size=256, num_classes=5, in_chans=1).eval()
    assert model.blocks[0].attn.attn_scale.shape == (6, 256, 256)  # 16x16 tokens at 256
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, plain.blocks[3].mlp.fc1.weight)
    torch.testing.assert_close(model.patch_embed.conv1.weight, plain.patch_embed.conv1.weight.sum(1, keepdim=True))
    with torch.no_grad():
        assert model(torch.randn(1, 1, 256, 256)).shape == (1, 5)


def test_bad_checkpoints_raise_clear_errors(tmp_path, tiny_plus_pair):
    plain = tiny_plus_pair[0]
    create = lambda path: timm.create_model(  # noqa: E731
        'rvt_tiny_plus', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))

    sd = _to_official(plain.state_dict(), (10, 2))
    del sd['transformers.0.blocks.4.mlp.bn2.running_var']
    torch.save({'state_dict': sd}, tmp_path / 'missing.pth.tar')
    with pytest.raises(CheckpointMismatchError, match=r'missing keys \(1\): blocks\.4\.mlp\.bn2\.running_var'):
        create(tmp_path / 'missing.pth.tar')

    small = timm.create_model('rvt_small')
    torch.save({'model': small.state_dict()}, tmp_path / 'small.pth')
    with pytest.raises(CheckpointMismatchError, match=r'mis-shaped keys .*blocks\.0\.attn\.proj\.weight \(384, 384\)'):
        create(tmp_path / 'small.pth')

    torch.save({'state_dict': {'w': torch.zeros(1)}, 'hook': os.getpid}, tmp_path / 'code.pth.tar')
    with pytest.raises(CheckpointError, match='never unpickles arbitrary objects'):
        create(tmp_path / 'code.pth.tar')

    with pytest.raises(FileNotFoundError, match='No checkpoint file'):
        create(tmp_path / 'nowhere.pth.tar')


# --- attention maps ---

@pytest.fixture
def unfused_attention(monkeypatch):
    """timm's fused-attention switch off for the models built in the test (restored afterwards)."""
    from timm.layers import config, set_fused_attn
    monkeypatch.setattr(config, '_USE_FUSED_ATTN', config._USE_FUSED_ATTN)
    set_fused_attn(False)


@pytest.mark.parametrize('method', ['fx', 'hook'])
def test_attention_maps_are_extractable_with_timm(unfused_attention, method):
    from timm.utils import AttentionExtract
    fused = _randomize(_small_rvt(), seed=5)  # block 0 with a scaling map, blocks 1-2 plain, a pool before block 2
    assert fused.blocks[1].attn.fused_attn is False  # built with the switch off
    for blk in fused.blocks:
        blk.attn.fused_attn = True
    explicit = _small_rvt()
    explicit.load_state_dict(fused.state_dict())
    explicit.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), fused(x), atol=1e-5, rtol=1e-5)
        maps = AttentionExtract(explicit, method=method)(x)  # timm's default names: *attn.softmax / *attn_drop
    suffix = 'softmax' if method == 'fx' else 'attn_drop'
    assert list(maps) == [f'blocks.{i}.attn.{suffix}' for i in range(3)]
    shapes = [tuple(m.shape) for m in maps.values()]
    assert shapes == [(2, 2, 16, 16), (2, 2, 16, 16), (2, 4, 4, 4)]  # (batch, heads, queries, keys)
    for m in maps.values():
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    # block 0's map is softmax(q k^T / sqrt(d) * sigmoid(scaling map)), from the block's own input
    attn = explicit.blocks[0].attn
    with torch.no_grad():
        tokens = explicit.blocks[0].norm1(explicit._embed(x)[0])
        q, k, _ = attn.qkv(tokens, (4, 4)).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
        expected = ((q @ k.transpose(-2, -1)) * 16 ** -0.5 * attn.attn_scale.sigmoid()).softmax(-1)
    torch.testing.assert_close(maps[f'blocks.0.attn.{suffix}'], expected)


def test_offline_with_an_empty_cache_says_where_to_put_the_release_file(hub_dir, monkeypatch):
    import urllib.error
    from timm_rspc.models.checkpoint_loading import WeightsDownloadError

    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(torch.hub, 'urlopen', offline)
    with pytest.raises(WeightsDownloadError) as info:
        timm.create_model('rvt_s_rspc', pretrained=True)
    assert str(info.value) == (
        "Could not download the weights of 'rvt_s_rspc' from "
        "https://github.com/guoyongcs/RSPC/releases/download/v1.0/rspc_rvt_small.pth.tar ([Errno -3] Temporary "
        f"failure in name resolution). Without network, put the release file at '{hub_dir / 'rspc_rvt_small.pth.tar'}'"
        " (timm's download cache) and try again.")
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one error, not a chain of 69 lines


# --- timm model contract (the full contract: tests/test_timm_model_suite.py) ---

def test_device_and_dtype_like_timm():
    model = timm.create_model('rvt_b_rspc', device='meta', dtype=torch.bfloat16)  # allocates nothing
    tensors = list(model.parameters()) + list(model.buffers())
    assert {t.device.type for t in tensors} == {'meta'}
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.bfloat16}
    model.reset_classifier(3)
    assert model.head.weight.device.type == 'meta' and model.head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize('dynamic_img_size', [False, True])
def test_torchscript_and_fx_give_the_eager_logits(dynamic_img_size):
    from timm.models import create_feature_extractor
    model = _randomize(_small_rvt(dynamic_img_size=dynamic_img_size), seed=6)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=0, atol=0)
        traced = create_feature_extractor(model, return_nodes=['head'])
        torch.testing.assert_close(traced(x)['head'], expected, rtol=0, atol=0)
        if not dynamic_img_size:  # the traced model keeps the input-size check
            with pytest.raises(ValueError, match='needs 64x64 input'):
                traced(torch.randn(1, 3, 96, 96))
