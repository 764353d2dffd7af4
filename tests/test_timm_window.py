"""The oldest supported timm (CI's second stage) against the newest: imports, logits, an RSPC step, a bench split.

Run under the oldest timm of the window (``.ci/run``: ``PYTHONPATH=.ci/timm-oldest python -m pytest -q
tests/test_timm_window.py``), each check also runs the same code in a subprocess under the *reference* timm, the one
installed in the environment (``TIMM_RSPC_REFERENCE_PYTHONPATH`` may point elsewhere), and compares. Under the newest
timm the two are the same and the test still checks that everything runs. Fast: about a minute on 2 CPU cores.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from timm_rspc._timm_compat import (
    MODELS_MIN_VERSION, TASK_MIN_VERSION, TRAINER_MIN_VERSION, TimmVersionError, timm_version_at_least,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One script, run here and under the reference timm: logits of fixed inputs for both families, features, one hook step.
PROBE = textwrap.dedent('''
    import json, sys, warnings
    warnings.simplefilter('ignore')
    import timm, torch, torch.nn.functional as F
    import timm_rspc
    from timm_rspc.method import RSPCHook

    out = {'timm': timm.__version__}
    for name, size in (('rvt_tiny_plus', 224), ('rvt_base', 224), ('fan_tiny_12_p16_224', 224),
                       ('fan_tiny_8_p4_hybrid', 224)):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=7).eval()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out[name] = model(x).tolist()
            final, inter = model.forward_intermediates(x[:1], indices=2)
            out[name + '/intermediates'] = [list(t.shape) for t in inter]
    feats = timm.create_model('fan_tiny_8_p4_hybrid', features_only=True, out_indices=(1, 2)).eval()
    out['fan/features_only'] = [list(f.shape) for f in feats(torch.zeros(1, 3, 64, 64))]

    torch.manual_seed(0)
    model = timm.create_model('rvt_tiny', num_classes=10, img_size=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rspc = RSPCHook(model)
    rspc.attach_optimizer(optimizer)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 3, 64, 64, generator=g), torch.randint(0, 10, (4,), generator=g)
    torch.manual_seed(3)
    xx, yy = rspc(x, y)
    output, align = rspc.split(model(xx))
    loss = F.cross_entropy(output, yy) + rspc.align_weight * align
    loss.backward()
    optimizer.step()
    out['hook'] = {'loss': loss.item(), 'align': align.item(),
                   'corruption_param_sum': sum(p.sum().item() for p in rspc.corruption.parameters()),
                   'model_param_sum': sum(p.double().sum().item() for p in model.parameters())}
    print(json.dumps(out))
''')


def _run_probe(pythonpath):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    done = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def here_and_reference():
    """(probe under this interpreter's timm, probe under the reference timm); the same when no override is set."""
    here_path = os.environ.get('PYTHONPATH', '')
    reference_path = os.environ.get('TIMM_RSPC_REFERENCE_PYTHONPATH', '')
    here = _run_probe(here_path)
    reference = _run_probe(reference_path) if here_path != reference_path else here
    return here, reference


def test_runs_on_the_timm_of_this_stage(here_and_reference):
    here, reference = here_and_reference
    assert here['timm'] == timm.__version__
    assert timm_version_at_least(MODELS_MIN_VERSION)
    print(f'timm {here["timm"]} against reference timm {reference["timm"]}')


@pytest.mark.parametrize('name', ['rvt_tiny_plus', 'rvt_base', 'fan_tiny_12_p16_224', 'fan_tiny_8_p4_hybrid'])
def test_logits_equal_the_reference_timm(here_and_reference, name):
    here, reference = here_and_reference
    torch.testing.assert_close(torch.tensor(here[name]), torch.tensor(reference[name]), rtol=0, atol=1e-5)
    assert here[name + '/intermediates'] == reference[name + '/intermediates']


def test_features_only_and_one_rspc_hook_step_equal_the_reference_timm(here_and_reference):
    here, reference = here_and_reference
    assert here['fan/features_only'] == reference['fan/features_only']
    for key, value in reference['hook'].items():
        assert here['hook'][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_task_imports_everywhere_and_names_its_timm_when_too_old():
    from timm_rspc.method import RSPCHook, RSPCTask, create_rspc_task  # noqa: F401  (importable on any timm)
    import timm_rspc.analysis  # noqa: F401
    import timm_rspc.bench  # noqa: F401
    import timm_rspc.train  # noqa: F401
    model = timm.create_model('rvt_tiny', num_classes=10, img_size=64)
    if timm_version_at_least(TASK_MIN_VERSION):
        task = RSPCTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
        result = task(torch.rand(2, 3, 64, 64), torch.tensor([0, 1]))
        assert torch.isfinite(result['loss'])
    else:
        with pytest.raises(TimmVersionError, match=rf'RSPCTask .*needs timm>={TASK_MIN_VERSION}; the installed timm '
                                                  rf'is {timm.__version__}'):
            RSPCTask(model, verbose=False)
    if not timm_version_at_least(TRAINER_MIN_VERSION):  # the module loads; the command names its timm when run
        from timm_rspc.train import trainer
        with pytest.raises(TimmVersionError, match=rf'timm-rspc train needs timm>={TRAINER_MIN_VERSION}'):
            trainer.create_classification_loss(loss_type='ce')


def test_one_bench_split(tmp_path):
    from bench_fixtures import write_wnid_folder
    from timm_rspc.bench import run_benchmark
    write_wnid_folder(str(tmp_path / 'val'), [(2, 2), (3, 3), (4, 4), (4, 5)])  # 3 of 4 right by design
    out = run_benchmark('bench_test_mean_pixel', str(tmp_path / 'run'), imagenet=str(tmp_path / 'val'), workers=0,
                        progress=False, plot=False, verbose=False)
    assert out['summary']['imagenet']['top1'] == 75.0


def test_pyproject_declares_the_models_lower_bound():
    """pip's lower bound is the oldest timm the models (and so ``import timm_rspc``) run on; .ci/run tests it."""
    with open(os.path.join(ROOT, 'pyproject.toml')) as f:
        bounds = re.findall(r'"timm>=([0-9.]+)"', f.read())
    assert bounds == [MODELS_MIN_VERSION]
