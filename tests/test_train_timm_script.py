"""The injection that gives timm's unmodified train.py ``--rspc``, tested without a timm checkout.

A stand-in script with train.py's seams (module-level ``parser``, ``ClassificationTask``, ``NativeScaler``,
``create_optimizer_v2``, ``resume_task_checkpoint``, ``train_one_epoch`` imported or defined at module level, and a
``main()`` run under ``if __name__ == '__main__'``) goes through the same loader and injection as timm's file.
"""
import sys
import textwrap

import pytest
import torch

from timm_rspc.method import RSPCTask
from timm_rspc.train import ConfigError
from timm_rspc.train.timm_script import (
    RSPCInjection, _cpu_ddp_without_device_ids, is_train_script, load_script, run_train_script,
)

STAND_IN_TRAIN_PY = textwrap.dedent('''
    import argparse
    from collections import OrderedDict

    import torch
    from timm.models import create_model
    from timm.optim import create_optimizer_v2
    from timm.task import ClassificationTask, resume_task_checkpoint
    from timm.utils import NativeScaler

    RESULT = {}
    parser = argparse.ArgumentParser(description='stand-in for timm train.py')
    parser.add_argument('--resume', default='')
    parser.add_argument('--model', default='vit_tiny_patch16_224')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--opt', default='sgd')


    def train_one_epoch(task, optimizer, input, target, loss_scaler=None):
        result = task(input, target)
        if loss_scaler is not None:
            loss_scaler(result['loss'], optimizer)
        else:
            result['loss'].backward()
            optimizer.step()
        optimizer.zero_grad()
        return OrderedDict([('loss', result['loss'].item())])


    def main():
        args = parser.parse_args()
        args.distributed = False
        torch.manual_seed(0)
        loss_scaler = NativeScaler(device='cpu') if args.amp else None
        model = create_model(args.model, num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32,
                             num_heads=2)
        task = ClassificationTask(model=model, criterion=torch.nn.CrossEntropyLoss(), device=torch.device('cpu'),
                                  dtype=None, verbose=False)
        optimizer = create_optimizer_v2(task.get_trainable_module(), opt=args.opt, lr=0.1)
        if args.resume:
            resume_task_checkpoint(task, args.resume, optimizer=optimizer)
        metrics = train_one_epoch(task, optimizer, torch.rand(4, 3, 32, 32), torch.arange(4), loss_scaler)
        RESULT.update(task=task, metrics=metrics, loss_scaler=loss_scaler)


    if __name__ == '__main__':
        main()
''')


@pytest.fixture
def script(tmp_path, monkeypatch):
    path = tmp_path / 'train.py'
    path.write_text(STAND_IN_TRAIN_PY)
    monkeypatch.setattr(sys, 'argv', [str(path)])
    return str(path)


def _run(script, monkeypatch, *argv):
    monkeypatch.setattr(sys, 'argv', [script, *argv])
    namespace = load_script(script)
    assert is_train_script(namespace)
    return run_train_script(namespace), namespace['RESULT']


def test_module_body_runs_but_not_main(script):
    namespace = load_script(script)
    assert namespace['RESULT'] == {} and callable(namespace['main'])


def test_rspc_flags_appear_in_the_scripts_help(script, capsys):
    namespace = load_script(script)
    RSPCInjection(namespace).install()
    with pytest.raises(SystemExit):
        namespace['parser'].parse_args(['--help'])
    help_text = capsys.readouterr().out
    assert 'stand-in for timm train.py' in help_text
    for flag in ('--rspc ', '--rspc-ratio', '--rspc-lambda', '--allow-method-change'):
        assert flag in help_text


def test_rspc_task_with_attached_optimizer_and_epoch_scalars(script, monkeypatch):
    injection, result = _run(script, monkeypatch, '--rspc', '--rspc-lambda', '0.5')
    task = result['task']
    assert isinstance(task, RSPCTask) and injection.rspc
    assert injection.task is None and not task._forward_hooks  # released once main() returned
    # The corruption model stepped with the main optimiser: attach_optimizer ran on train.py's optimiser.
    assert task.corruption_optimizer.optimizer.state, 'the corruption model was never stepped'
    metrics = result['metrics']
    assert list(metrics) == ['loss', 'task_loss', 'align_loss', 'occluded_fraction']
    assert metrics['loss'] == pytest.approx(metrics['task_loss'] + 0.5 * metrics['align_loss'], rel=1e-6)
    assert metrics['occluded_fraction'] == pytest.approx(2 / 16)  # 10% of a 4x4 grid, rounded to 2 patches


def test_corruption_model_steps_through_train_pys_loss_scaler(script, monkeypatch):
    """train.py creates its NativeScaler before the task: C's optimiser unscales its gradients with that scaler."""
    _, result = _run(script, monkeypatch, '--rspc', '--amp')
    task, scaler = result['task'], result['loss_scaler']
    assert task.corruption_optimizer.grad_scaler is scaler._scaler
    assert task.corruption_optimizer.optimizer.state, 'the corruption model was never stepped'
    _, result = _run(script, monkeypatch, '--rspc')
    assert result['task'].corruption_optimizer.grad_scaler is None


def test_without_rspc_the_script_is_unchanged(script, monkeypatch):
    injection, result = _run(script, monkeypatch)
    assert type(result['task']).__name__ == 'ClassificationTask' and not injection.rspc
    assert list(result['metrics']) == ['loss']


def test_resume_across_methods_needs_the_switch(script, monkeypatch, tmp_path):
    _, result = _run(script, monkeypatch, '--rspc')
    checkpoint = str(tmp_path / 'rspc.pth.tar')
    torch.save({**result['task'].get_checkpoint_state(), 'epoch': 0}, checkpoint)
    with pytest.raises(ConfigError, match=r"was trained with --rspc .*pass --rspc .*--allow-method-change"):
        _run(script, monkeypatch, '--resume', checkpoint)
    _, resumed = _run(script, monkeypatch, '--resume', checkpoint, '--allow-method-change')
    assert type(resumed['task']).__name__ == 'ClassificationTask'
    _, resumed = _run(script, monkeypatch, '--resume', checkpoint, '--rspc')
    assert isinstance(resumed['task'], RSPCTask)


def test_resume_with_another_optimiser_is_refused(script, monkeypatch, tmp_path):
    """timm's resume loads an AdamW state into SGD and the first step fails (KeyError: 'momentum')."""
    import argparse
    _, result = _run(script, monkeypatch, '--opt', 'adamw')
    task = result['task']
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters())
    checkpoint = str(tmp_path / 'adamw.pth.tar')
    torch.save({**task.get_checkpoint_state(), 'epoch': 0, 'optimizer': optimizer.state_dict(),
                'args': argparse.Namespace(opt='adamw')}, checkpoint)
    with pytest.raises(ConfigError, match=r"was trained with --opt adamw, this run uses --opt sgd: pass --opt adamw"):
        _run(script, monkeypatch, '--resume', checkpoint)
    _run(script, monkeypatch, '--resume', checkpoint, '--opt', 'adamw')


def test_train_script_without_task_seams_refuses_rspc(script, monkeypatch):
    namespace = load_script(script)
    del namespace['resume_task_checkpoint']
    monkeypatch.setattr(sys, 'argv', [script, '--rspc'])
    with pytest.raises(ConfigError, match=r'no resume_task_checkpoint \(timm before 1\.0\.27'):
        run_train_script(namespace)


def test_cpu_ddp_gets_no_device_ids():
    calls = []
    prepare = _cpu_ddp_without_device_ids(lambda device_ids=None, **kw: calls.append((device_ids, kw)))
    prepare(device_ids=[torch.device('cpu')], broadcast_buffers=False)
    prepare(device_ids=[torch.device('cuda', 1)])
    assert calls == [(None, {'broadcast_buffers': False}), ([torch.device('cuda', 1)], {})]


def test_run_script_reports_config_errors_in_one_line(script, capsys):
    from timm_rspc.run_script import main
    assert main([script, '--rspc', '--rspc-blocks', '7']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("train.py: error: cannot set up the RSPC task for 'vit_tiny_patch16_224'")
