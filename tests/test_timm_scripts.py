"""This package's models and RSPC task inside timm's own train.py / validate.py (a timm source checkout).

The scripts are not part of the package: set TIMM_SCRIPTS_DIR to a folder holding timm's train.py and validate.py
(by default the test looks in a `timm` folder beside this repository); without one the tests skip.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

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


RECIPE_IMPORT = 'from timm_rspc.method import add_rspc_args, create_rspc_task\nadd_rspc_args(parser)\n'


def apply_rspc_recipe(source: str) -> str:
    """The README's recipe applied to timm's train.py source: add the flags, build the task, attach the optimiser."""
    source, n_parse = re.subn(r'\ndef _parse_args\(\):', '\n' + RECIPE_IMPORT + '\n\ndef _parse_args():', source)
    source, n_task = re.subn(
        r'task = ClassificationTask\(\n.*?\n(\s*)\)\n',
        'task = create_rspc_task(args, model, train_loss_fn, device=device, dtype=model_dtype, '
        'verbose=utils.is_primary(args))\n', source, count=1, flags=re.S)
    source, n_opt = re.subn(
        r'\n(\s*)# optionally resume from a checkpoint',
        r'\n\1task.attach_optimizer(optimizer, loss_scaler)\n\n\1# optionally resume from a checkpoint', source, count=1)
    if (n_parse, n_task, n_opt) != (1, 1, 1):
        pytest.skip('this timm train.py does not have the lines the recipe edits')
    return source


def test_rspc_recipe_in_timm_train(data_dir, tmp_path):
    if importlib.util.find_spec('timm_rspc.method') is None:
        pytest.skip('timm_rspc.method is not available yet')
    scripts = _scripts_dir()
    with open(os.path.join(scripts, 'train.py')) as f:
        patched = apply_rspc_recipe(f.read())
    script = tmp_path / 'train_rspc.py'
    script.write_text(patched)
    model_flags = ['--model', 'vit_tiny_patch16_224', '--num-classes', '10', '--img-size', '32', '--model-kwargs',
                   'img_size=32', 'patch_size=8', 'depth=2', 'embed_dim=32', 'num_heads=2']
    proc = _run([sys.executable, str(script), '--device', 'cpu', '--data-dir', data_dir, *model_flags, '-b', '10',
                 '-j', '0', '--epochs', '1', '--rspc', '--output', str(tmp_path), '--experiment', 'rspc'],
                cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from timm.models._helpers import _torch_load
    checkpoint = _torch_load(str(tmp_path / 'rspc' / 'last.pth.tar'))
    assert checkpoint.get('task_state'), 'the RSPC task state (corruption model) is not in the checkpoint'
