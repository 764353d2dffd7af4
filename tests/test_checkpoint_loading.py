"""Reading every container format safely and loading strictly (model-agnostic part of checkpoint loading)."""
import argparse
import os
import re

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from timm_rspc.models.checkpoint_loading import (
    CheckpointError, CheckpointMismatchError, UnsafeCheckpointError, load_checkpoint, read_checkpoint, read_state_dict,
)


class Tiny(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {'classifier': 'head'}


def _weights(seed):
    torch.manual_seed(seed)
    return Tiny().state_dict()


@pytest.fixture
def weights():
    return {'plain': _weights(0), 'ema': _weights(1)}


def _containers(weights):
    args = argparse.Namespace(model='tiny', lr=1e-3, epochs=300)
    return {
        'timm_train': {'state_dict': weights['plain'], 'state_dict_ema': weights['ema'], 'arch': 'tiny',
                       'epoch': 299, 'args': args, 'metric': 79.5},
        'deit_style': {'model': weights['plain'], 'model_ema': weights['ema'], 'epoch': 299, 'args': args,
                       'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]}},
        'ddp_prefixed': {'state_dict': {f'module.{k}': v for k, v in weights['plain'].items()}},
        'bare': weights['plain'],
    }


@pytest.mark.parametrize('fmt', ['timm_train', 'deit_style', 'ddp_prefixed', 'bare'])
def test_reads_non_ema_weights_by_default(tmp_path, weights, fmt):
    path = tmp_path / f'{fmt}.pth.tar'
    torch.save(_containers(weights)[fmt], path)
    state_dict = read_state_dict(path)
    assert set(state_dict) == set(weights['plain'])
    for k, v in weights['plain'].items():
        assert torch.equal(state_dict[k], v)


@pytest.mark.parametrize('fmt', ['timm_train', 'deit_style'])
def test_reads_ema_weights_only_when_asked(tmp_path, weights, fmt):
    path = tmp_path / f'{fmt}.pth.tar'
    torch.save(_containers(weights)[fmt], path)
    state_dict = read_state_dict(path, use_ema=True)
    assert all(torch.equal(state_dict[k], v) for k, v in weights['ema'].items())


def test_missing_ema_is_an_error(tmp_path, weights):
    path = tmp_path / 'bare.pth'
    torch.save({'state_dict': weights['plain']}, path)
    with pytest.raises(CheckpointError, match='has no EMA weights'):
        read_state_dict(path, use_ema=True)


@pytest.mark.parametrize('name', ['model.safetensors', 'model.bin'])
def test_safetensors_by_extension_or_content(tmp_path, weights, name):
    path = tmp_path / name
    save_file(weights['plain'], str(path))
    assert all(torch.equal(read_state_dict(path)[k], v) for k, v in weights['plain'].items())


class _Payload:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_never_unpickles_arbitrary_objects(tmp_path, weights):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': weights['plain'], 'extra': _Payload()}, path)
    with pytest.raises(CheckpointError, match='never unpickles arbitrary objects'):
        read_state_dict(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='No checkpoint file'):
        read_state_dict(tmp_path / 'nope.pth')


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match='expected a dict'):
        read_state_dict(path)


def test_strict_load_names_the_keys(tmp_path, weights):
    broken = dict(weights['plain'])
    broken['body.extra'] = torch.zeros(1)
    del broken['body.bias']
    broken['head.weight'] = torch.zeros(7, 5)
    path = tmp_path / 'broken.pth'
    torch.save({'state_dict': broken}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(Tiny(), path)
    message = str(info.value)
    assert 'missing keys (1): body.bias' in message
    assert 'unexpected keys (1): body.extra' in message
    assert 'head.weight (7, 5) vs model (3, 5)' in message


def test_loads_exactly_and_adapts_classifier_on_request(tmp_path, weights):
    path = tmp_path / 'ok.pth'
    torch.save({'state_dict': weights['plain']}, path)
    model = load_checkpoint(Tiny(), path)
    assert torch.equal(model.body.weight, weights['plain']['body.weight'])

    with pytest.raises(CheckpointMismatchError, match='head.weight'):
        load_checkpoint(Tiny(num_classes=10), path)
    model = load_checkpoint(Tiny(num_classes=10), path, adapt_classifier=True)
    assert torch.equal(model.body.weight, weights['plain']['body.weight']) and model.head.out_features == 10
    model = load_checkpoint(Tiny(num_classes=0), path, adapt_classifier=True)
    assert torch.equal(model.body.bias, weights['plain']['body.bias'])


def test_classifier_of_another_size_names_the_file_and_both_shapes(tmp_path, weights):
    path = tmp_path / 'ten_classes.pth'
    torch.save({'state_dict': Tiny(num_classes=10).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            f"'{path}' has a classifier for 10 classes (head.weight (10, 5)), the model one for 3 (head.weight "
            "(3, 5)): these are not the weights the model was built for. Build the model with num_classes=10")):
        load_checkpoint(Tiny(), path)


@pytest.fixture
def download_cache(tmp_path, monkeypatch):
    """timm's download cache (``<torch hub dir>/checkpoints``) in a temporary folder."""
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    return tmp_path / 'hub' / 'checkpoints'


def _damage(path, how, weights):
    if how == 'empty':
        path.write_bytes(b'')
    elif how == 'truncated':
        torch.save({'state_dict': weights['plain']}, path)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    else:  # random bytes
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())


@pytest.mark.parametrize('how', ['empty', 'truncated', 'random'])
def test_damaged_cached_download_says_delete_and_download_again(download_cache, tmp_path, weights, how):
    cached = download_cache / 'rspc_rvt_tiny.pth.tar'
    _damage(cached, how, weights)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(cached)
    message = str(info.value)
    assert message.startswith('This cached download is damaged (') and message.endswith(
        f"): delete '{cached}' and download again.")
    assert 'weights_only' not in message and 'Python objects' not in message
    elsewhere = tmp_path / 'mine.pth'  # the user's own file: damaged, nothing to download
    _damage(elsewhere, how, weights)
    with pytest.raises(CheckpointError, match=re.escape(f"'{elsewhere}' is damaged (")) as info:
        read_state_dict(elsewhere)
    assert 'weights_only' not in str(info.value)


def test_unsafe_file_is_refused_without_advice_to_unpickle_it(tmp_path, weights):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': weights['plain'], 'hook': os.getpid}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"is unsafe to read: it would import posix\.getpid when") as info:
        read_state_dict(path)
    assert 'weights_only' not in str(info.value) and info.value.globals == ('posix.getpid',)


def test_numpy_metrics_are_allowed_everywhere(tmp_path, weights):
    """A checkpoint holding a numpy metric (timm's best metric can be one) reads in every path: one allow-list."""
    import numpy as np
    from timm_rspc.train.resume_check import read_training_checkpoint
    path = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': weights['plain'], 'metric': np.float64(71.5), 'epoch': 3}, path)
    assert read_checkpoint(path)['metric'] == 71.5
    assert read_training_checkpoint(str(path))['metric'] == 71.5  # --resume refused it as unsafe before
