"""This package's models and RSPC task inside timm's own train.py / validate.py (a timm source checkout).

The scripts are not part of the package: set TIMM_SCRIPTS_DIR to a folder holding timm's train.py and validate.py
(by default the test looks in a `timm` folder beside this repository); without one the tests skip.
"""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from timm_rspc.demo.shapes import write_image_folder

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scripts_dir():
    candidates = [os.environ.get('TIMM_SCRIPTS_DIR'), os.path.join(REPO_ROOT, '..', 'timm')]
    for folder in filter(None, candidates):
        if all(os.path.isfile(os.path.join(folder, s)) for s in ('train.py', 'validate.py')):
            return folder
    pytest.skip('no timm checkout with train.py / validate.py (set TIMM_SCRIPTS_DIR)')


def _package_model():
    from timm_rspc.cli.models import list_package_models
    assert 'rvt_tiny' in [row['name'] for row in list_package_models()]
    return 'rvt_tiny'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('timm_scripts') / 'data'
    write_image_folder(str(root), num_train=2, num_val=1, img_size=32, seed=0)
    return str(root)


def _run(cmd, cwd):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _small_model_flags(model):
    # RVT-Ti's layout, narrowed to one stage of one block so that a CPU epoch takes a second.
    return ['--model', model, '--num-classes', '10', '--img-size', '32', '--model-kwargs', 'img_size=32',
            'embed_dims=(32,)', 'depths=(1,)', 'num_heads=(2,)']


def test_timm_train_and_validate_see_package_models(data_dir, tmp_path):
    scripts, model = _scripts_dir(), _package_model()
    train = _run([sys.executable, os.path.join(scripts, 'train.py'), '--device-modules', 'timm_rspc',
                  '--device', 'cpu', '--data-dir', data_dir, *_small_model_flags(model), '-b', '10', '-j', '0',
                  '--epochs', '1', '--output', str(tmp_path), '--experiment', 'timm'], cwd=str(tmp_path))
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = tmp_path / 'timm' / 'last.pth.tar'
    assert checkpoint.exists()
    validate = _run([sys.executable, '-m', 'timm_rspc.run_script', os.path.join(scripts, 'validate.py'),
                     '--device', 'cpu', '--data-dir', data_dir, *_small_model_flags(model), '-b', '10', '-j', '0',
                     '--checkpoint', str(checkpoint)], cwd=REPO_ROOT)
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert re.search(r'"top1":\s*[0-9.]+', validate.stdout + validate.stderr)


TINY_VIT = ['--model', 'vit_tiny_patch16_224', '--num-classes', '10', '--img-size', '32', '--model-kwargs',
            'img_size=32', 'patch_size=8', 'depth=2', 'embed_dim=32', 'num_heads=2']


def _timm_train(scripts, data_dir, out, experiment, *flags, launcher=()):
    return _run([sys.executable, *launcher, '-m', 'timm_rspc.run_script', os.path.join(scripts, 'train.py'),
                 '--device', 'cpu', '--data-dir', data_dir, *TINY_VIT, '-j', '0', '--output', str(out),
                 '--experiment', experiment, *flags], cwd=str(out))


def _load(path):
    from timm.models._helpers import _torch_load
    return _torch_load(str(path), weights_only=True)


def test_rspc_flags_and_method_check_in_timm_train(data_dir, tmp_path, monkeypatch):
    """In process: the real train.py's --help lists the RSPC flags; resuming an RSPC checkpoint without --rspc is an
    error naming the flag, raised before timm touches the file."""
    import timm.utils
    from timm_rspc.train import ConfigError
    from timm_rspc.train.timm_script import RSPCInjection, load_script, run_train_script
    scripts = _scripts_dir()
    monkeypatch.setattr(timm.utils, 'setup_default_logging', lambda *args, **kwargs: None)  # no handler left behind
    namespace = load_script(os.path.join(scripts, 'train.py'))
    RSPCInjection(namespace).install()
    help_text = namespace['parser'].format_help()
    assert '--rspc-ratio' in help_text and '--allow-method-change' in help_text and '--kd-model-name' in help_text

    checkpoint = tmp_path / 'rspc.pth.tar'
    import timm
    model = timm.create_model('vit_tiny_patch16_224', num_classes=10, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2)
    torch.save({'state_dict': model.state_dict(), 'task_state': {'corruption_model': {}}, 'epoch': 0}, checkpoint)
    monkeypatch.setattr(sys, 'argv', ['train.py', '--device', 'cpu', '--data-dir', data_dir, *TINY_VIT, '-j', '0',
                                      '--output', str(tmp_path), '--resume', str(checkpoint)])
    with pytest.raises(ConfigError, match=f"--resume file '{checkpoint}' was trained with --rspc"):
        run_train_script(load_script(os.path.join(scripts, 'train.py')))


def test_rspc_on_unmodified_timm_train_checkpoint_resume_ema(data_dir, tmp_path):
    """timm's train.py as it is, run through timm_rspc.run_script: summary columns, --result, the corruption model
    in the checkpoint and back on resume, EMA."""
    scripts = _scripts_dir()
    first = _timm_train(scripts, data_dir, tmp_path, 'rspc', '-b', '10', '--epochs', '1', '--rspc', '--model-ema',
                        '--model-ema-decay', '0.5')
    assert first.returncode == 0, first.stderr[-3000:]
    header, *rows = (tmp_path / 'rspc' / 'summary.csv').read_text().strip().splitlines()
    assert header.split(',')[:5] == ['epoch', 'train_loss', 'train_task_loss', 'train_align_loss',
                                     'train_occluded_fraction']
    values = dict(zip(header.split(','), rows[0].split(',')))
    assert float(values['train_occluded_fraction']) == 0.125  # 10% of a 4x4 grid, rounded to 2 patches
    assert float(values['train_loss']) == pytest.approx(
        float(values['train_task_loss']) + 0.005 * float(values['train_align_loss']), rel=1e-6)
    assert '"align_loss"' in first.stdout  # train.py's --result JSON
    checkpoint = _load(tmp_path / 'rspc' / 'last.pth.tar')
    assert {'corruption_model', 'corruption_optimizer'} <= set(checkpoint['task_state'])
    assert checkpoint['state_dict_ema'].keys() == checkpoint['state_dict'].keys()

    resumed = _timm_train(scripts, data_dir, tmp_path, 'resumed', '-b', '10', '--epochs', '2', '--rspc',
                          '--seed', '7', '--model-ema', '--model-ema-decay', '0.5',
                          '--resume', str(tmp_path / 'rspc' / 'last.pth.tar'))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'no corruption model state' not in resumed.stderr
    # The resumed run (another seed) continues the saved corruption model: one epoch of steps of norm <= lr * clip
    # (1 x 1e-4 x 5) away from it, where a new one would differ by its random initialisation.
    saved = checkpoint['task_state']['corruption_model']
    after = _load(tmp_path / 'resumed' / 'last.pth.tar')
    assert after['epoch'] == 1
    distance = sum((after['task_state']['corruption_model'][k] - v).norm() ** 2 for k, v in saved.items()) ** 0.5
    assert distance <= 1e-4 * 5 + 1e-6


def test_rspc_on_unmodified_timm_train_under_torchrun(data_dir, tmp_path):
    """Two CPU processes (gloo) through torchrun: one summary row averaged over both ranks, one checkpoint."""
    scripts = _scripts_dir()
    proc = _timm_train(scripts, data_dir, tmp_path, 'ddp', '-b', '5', '--epochs', '1', '--rspc',
                       launcher=('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, row = (tmp_path / 'ddp' / 'summary.csv').read_text().strip().splitlines()
    assert 'train_align_loss' in header.split(',')
    assert float(dict(zip(header.split(','), row.split(',')))['train_occluded_fraction']) == 0.125
    assert 'corruption_model' in _load(tmp_path / 'ddp' / 'last.pth.tar')['task_state']


@pytest.mark.parametrize('amp_dtype', ['float16', 'bfloat16'])
def test_rspc_on_unmodified_timm_train_with_amp(data_dir, tmp_path, amp_dtype):
    """`--amp` (float16 is timm's default --amp-dtype) with grad checkpointing and channels_last, under CPU autocast,
    which gives the dtype mix of a CUDA run."""
    proc = _timm_train(_scripts_dir(), data_dir, tmp_path, amp_dtype, '-b', '10', '--epochs', '1', '--rspc',
                       '--amp', '--amp-dtype', amp_dtype, '--grad-checkpointing', '--channels-last')
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, row = (tmp_path / amp_dtype / 'summary.csv').read_text().strip().splitlines()
    values = {k: float(v) for k, v in zip(header.split(','), row.split(','))}
    assert all(math.isfinite(values[k]) for k in ('train_loss', 'train_align_loss', 'eval_loss'))
    assert values['train_align_loss'] > 0
