"""The trainer's foreseeable errors: one line on stderr, exit status 2, nothing written; ``--verbose`` shows the
traceback. Damaged, unsafe, foreign and other-method ``--resume`` files, a busy run folder, a full disk."""
import argparse
import errno
import io
import logging
import os
import pickle
import re

import pytest
import timm
import torch

from timm_rspc.cli import main
from timm_rspc.demo.shapes import write_image_folder
from timm_rspc.method import create_rspc_task
from timm_rspc.train import ConfigError
from timm_rspc import files
from timm_rspc.train import output as run_output
from timm_rspc.train.output import claim_output_dir

VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
TINY_MODEL = ['--model', 'vit_tiny_patch16_224', '--num-classes', '10', '--model-kwargs',
              *[f'{k}={v}' for k, v in VIT.items()]]
FAST = ['-b', '10', '-j', '0', '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '0', '--log-interval', '100']


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch):
    """main() adds a stderr log handler per call, which in one process would write into other tests' closed capture
    streams: none is added, and those already on the root logger are set aside during the test."""
    monkeypatch.setattr(timm.utils, 'setup_default_logging', lambda *args, **kwargs: None)
    monkeypatch.setattr(logging.root, 'handlers', [])


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes') / 'data'
    write_image_folder(str(root), num_train=2, num_val=1, img_size=32, seed=0)
    return str(root)


def _train(data_dir, tmp_path, *flags):
    return main(['train', '--data-dir', data_dir, *TINY_MODEL, *FAST, '--output', str(tmp_path / 'out'),
                 '--experiment', 'run', *flags])


def _one_error_line(capsys):
    """The error line (the log lines before it aside): exactly one, and no traceback."""
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'weights_only=False' not in err
    lines = [line for line in err.splitlines() if line.startswith('timm-rspc train: error: ')]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-2000:]
    return lines[0]


def _tiny_vit(num_classes=10):
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', num_classes=num_classes, **VIT)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo this must never run',))


def _write(path, kind):
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        buffer = io.BytesIO()
        torch.save({'state_dict': _tiny_vit().state_dict(), 'epoch': 0}, buffer)
        path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    elif kind == 'random bytes':
        path.write_bytes(os.urandom(4096))
    elif kind == 'unsafe':
        torch.save({'state_dict': _tiny_vit().state_dict(), 'payload': _RunsCode()}, path)
    elif kind == 'unsafe legacy pickle':
        path.write_bytes(pickle.dumps({'payload': _RunsCode()}))
    elif kind == 'weights only':
        torch.save(_tiny_vit().state_dict(), path)
    elif kind == 'other model':
        torch.save({'state_dict': _tiny_vit(num_classes=100).state_dict(), 'arch': 'vit_tiny_patch16_224'}, path)


@pytest.mark.parametrize('flag, kind, message', [
    ('--resume', 'empty', r"is damaged \(an empty file \(0 bytes\), e\.g\. an interrupted copy\)\. Resume from "
                          r"another checkpoint of the run"),
    ('--resume', 'truncated', r"is damaged \(truncated or corrupt: .*\)\. Resume from another checkpoint"),
    ('--resume', 'random bytes', r"is damaged \((truncated or corrupt|not a checkpoint): "),
    ('--resume', 'unsafe', r"is unsafe: it would run code \(posix\.system\) when loaded.*so it was not loaded"),
    ('--resume', 'unsafe legacy pickle', r"is unsafe: it would run code \(posix\.system\)"),
    ('--resume', 'weights only', r"is not a training checkpoint \(no 'state_dict' entry\).*--initial-checkpoint"),
    ('--resume', 'other model', r"is a checkpoint of another model \(vit_tiny_patch16_224\): its weights do not fit "
                                r"this one \(2 of other shape, e\.g\. head\.weight \(100, 32\) in the file, "
                                r"\(10, 32\) here\)"),
    ('--initial-checkpoint', 'truncated', r"is damaged \(truncated or corrupt: "),
    ('--initial-checkpoint', 'unsafe', r"is unsafe: it would run code \(posix\.system\) when loaded"),
    ('--initial-checkpoint', 'other model', r"is a checkpoint of another model \(vit_tiny_patch16_224\).*"
                                            r"head\.weight \(100, 32\) in the file, \(10, 32\) here\).*"
                                            r"--pretrained-path"),
])
@pytest.mark.filterwarnings('ignore:Detected pickle protocol')  # torch, about the legacy pickle
def test_bad_checkpoint_file_is_one_line_and_nothing_is_written(data_dir, tmp_path, capsys, flag, kind, message):
    path = tmp_path / 'last.pth.tar'
    _write(path, kind)
    assert _train(data_dir, tmp_path, flag, str(path)) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"timm-rspc train: error: {flag} file '{path}' ")
    assert re.search(message, line), line
    assert not (tmp_path / 'out').exists()


def test_initial_checkpoint_of_the_same_model_loads(data_dir, tmp_path):
    path = tmp_path / 'weights.pth.tar'
    _write(path, 'weights only')
    assert _train(data_dir, tmp_path, '--initial-checkpoint', str(path), '--epochs', '1') == 0


def test_verbose_shows_the_traceback(data_dir, tmp_path):
    path = tmp_path / 'empty.pth.tar'
    path.write_bytes(b'')
    with pytest.raises(ConfigError, match='is damaged'):
        _train(data_dir, tmp_path, '--resume', str(path), '--verbose')


def _checkpoint_of(task, path):
    torch.save({**task.get_checkpoint_state(), 'epoch': 0, 'version': 2}, path)


def test_resume_across_methods_names_the_flag(data_dir, tmp_path, capsys):
    args = argparse.Namespace(rspc=True, input_size=None, img_size=None, mean=None, std=None)
    rspc_file, plain_file = tmp_path / 'rspc.pth.tar', tmp_path / 'plain.pth.tar'
    _checkpoint_of(create_rspc_task(args, _tiny_vit(), verbose=False), rspc_file)
    _checkpoint_of(create_rspc_task(argparse.Namespace(rspc=False), _tiny_vit(), verbose=False), plain_file)

    assert _train(data_dir, tmp_path, '--resume', str(rspc_file)) == 2
    assert _one_error_line(capsys).endswith(
        f"--resume file '{rspc_file}' was trained with --rspc (it holds the corruption model): pass --rspc to "
        "continue it, or --allow-method-change to continue it as plain training.")
    assert _train(data_dir, tmp_path, '--resume', str(plain_file), '--rspc') == 2
    assert _one_error_line(capsys).endswith(
        f"--resume file '{plain_file}' was trained without --rspc: drop --rspc to continue it, or pass "
        "--allow-method-change to continue it with RSPC (the corruption model then starts afresh).")
    assert not (tmp_path / 'out').exists()


def test_busy_run_folder_is_one_line(data_dir, tmp_path, capsys):
    held = claim_output_dir(argparse.Namespace(
        output=str(tmp_path / 'out'), experiment='run', model='m', resume='', output_exists='error'), 32)
    try:
        assert _train(data_dir, tmp_path, '--epochs', '1') == 2
        assert _one_error_line(capsys).startswith(
            f"timm-rspc train: error: output folder '{tmp_path / 'out' / 'run'}' is in use by another training run "
            f"(PID {os.getpid()} on ")
    finally:
        held.release()


class _FillsUp:
    """A file on a disk that fills up: writes fail with ENOSPC once ``budget`` bytes are spent."""
    budget = None

    def __init__(self, path):
        self.file = open(path, 'wb')

    def write(self, data):
        if _FillsUp.budget is not None:
            if len(data) > _FillsUp.budget:
                raise OSError(errno.ENOSPC, 'No space left on device')
            _FillsUp.budget -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_full_disk_is_one_line_and_the_last_checkpoint_survives(data_dir, tmp_path, capsys, monkeypatch):
    """The disk fills while the second epoch's checkpoint is written: one line naming the folder, exit 2,
    last.pth.tar still the complete first epoch, no temp file left."""
    saves = []
    save_checkpoint = run_output.AtomicCheckpointSaver.save_checkpoint

    def save_then_fill_disk(self, epoch, metric=None):
        _FillsUp.budget = 1000 if saves else None  # the first checkpoint fits, the second does not
        saves.append(epoch)
        return save_checkpoint(self, epoch, metric)

    monkeypatch.setattr(files, '_open_for_writing', _FillsUp)
    monkeypatch.setattr(run_output.AtomicCheckpointSaver, 'save_checkpoint', save_then_fill_disk)
    assert _train(data_dir, tmp_path, '--epochs', '2') == 2
    run = tmp_path / 'out' / 'run'
    assert _one_error_line(capsys) == (
        f"timm-rspc train: error: no space left on the disk of '{run}' while writing the checkpoint of epoch 1 "
        f"(0.0 MiB written, {_free_mib(run)} MiB free); the previous files are intact, nothing was lost: free some "
        "space, then resume from the run's last.pth.tar with --resume")
    assert torch.load(run / 'last.pth.tar', weights_only=False)['epoch'] == 0
    assert not [name for name in os.listdir(run) if 'partial' in name or name.startswith('tmp')]


def _free_mib(folder):
    import shutil
    return f'{shutil.disk_usage(folder).free / 2 ** 20:.1f}'


def test_method_of_a_checkpoint_comes_from_its_arguments_first():
    from timm_rspc.train.resume_check import check_same_method
    with_args = {'args': argparse.Namespace(rspc=True), 'task_state': {}}
    with pytest.raises(ConfigError, match='was trained with --rspc'):
        check_same_method(with_args, rspc=False, allow_method_change=False, path='x')
    check_same_method(with_args, rspc=False, allow_method_change=True, path='x')
    without_args = {'task_state': {'corruption_model': {}}}
    with pytest.raises(ConfigError, match='was trained with --rspc'):
        check_same_method(without_args, rspc=False, allow_method_change=False, path='x')
    with pytest.raises(ConfigError, match='was trained without --rspc'):
        check_same_method({'args': argparse.Namespace(rspc=False)}, rspc=True, allow_method_change=False, path='x')


def test_resume_with_another_optimiser_is_one_line(data_dir, tmp_path, capsys):
    """torch loads an AdamW state into SGD without complaint and the first step fails (KeyError: 'momentum')."""
    model = _tiny_vit()
    task = create_rspc_task(argparse.Namespace(rspc=False), model, verbose=False)
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / 'adamw.pth.tar'
    torch.save({**task.get_checkpoint_state(), 'epoch': 0, 'version': 2, 'optimizer': adamw.state_dict(),
                'args': argparse.Namespace(opt='adamw', rspc=False)}, path)
    assert _train(data_dir, tmp_path, '--opt', 'sgd', '--resume', str(path), '--epochs', '2') == 2
    assert _one_error_line(capsys) == (
        f"timm-rspc train: error: --resume file '{path}' was trained with --opt adamw, this run uses --opt sgd: pass "
        "--opt adamw to continue it, or --no-resume-opt to continue its weights with a new sgd optimiser.")
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without a CUDA GPU')
def test_device_without_that_device_is_one_line(data_dir, tmp_path, capsys):
    assert _train(data_dir, tmp_path, '--device', 'cuda') == 2
    assert _one_error_line(capsys) == (
        'timm-rspc train: error: --device cuda: no cuda device is available on this machine; use --device cpu, or '
        'leave --device out (cuda when available, else cpu).')


def test_a_bad_flag_value_is_one_line_without_the_usage(data_dir, tmp_path, capsys):
    """argparse prints the trainer's whole usage (81 lines) before a flag's error; here only the error."""
    with pytest.raises(SystemExit) as exit_:
        _train(data_dir, tmp_path, '--rspc', '--rspc-ratio', '0')
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        'timm-rspc train: error: argument --rspc-ratio: must be a finite number in (0, 1), got 0.0 (see --help)']


def test_ctrl_c_is_one_line_naming_what_was_saved(data_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the first epoch: status 130, nothing saved, and the flag that starts the folder again; a rerun
    names the folder as a run that died before its first checkpoint."""
    from timm_rspc.train import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(trainer, 'train_one_epoch', interrupted)
        assert _train(data_dir, tmp_path, '--epochs', '1') == 130
    run = tmp_path / 'out' / 'run'
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"timm-rspc train: interrupted before the first checkpoint: nothing to resume was saved; start again into "
        f"'{run}' with --output-exists overwrite")
    assert sorted(os.listdir(run)) == ['.timm-rspc.lock', 'args.yaml']
    assert _train(data_dir, tmp_path, '--epochs', '1') == 2
    assert 'holds a training run that stopped before its first checkpoint' in _one_error_line(capsys)
    assert _train(data_dir, tmp_path, '--epochs', '1', '--output-exists', 'overwrite', '--val-split', '') == 0


def test_resume_with_no_epoch_left_is_one_line(data_dir, tmp_path, capsys):
    """Before: the loop ended at once, printed an empty result and exited 0, as if it had trained."""
    assert _train(data_dir, tmp_path, '--epochs', '2') == 0
    last = tmp_path / 'out' / 'run' / 'last.pth.tar'
    capsys.readouterr()
    assert _train(data_dir, tmp_path, '--epochs', '2', '--resume', str(last)) == 2
    assert _one_error_line(capsys) == (
        f"timm-rspc train: error: --resume file '{last}' has finished epoch 1 of its run, and this run trains 2 "
        "epochs in all: nothing is left to train. Pass --epochs 3 or more to train on.")
    assert _train(data_dir, tmp_path, '--epochs', '3', '--resume', str(last)) == 0  # extending it works
