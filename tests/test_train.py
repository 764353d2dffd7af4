"""The trainer end to end on a tiny generated image folder: CLI, YAML config, exact resume after a kill, 2-process
DDP on CPU (gloo), crash-safe checkpoint writes and errors before any compute."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml

from timm_rspc.demo.shapes import write_image_folder
from timm_rspc.train import ConfigError, parse_args, train
from timm_rspc.train.output import AtomicCheckpointSaver, append_summary_row
from timm_rspc.train.rng import capture_rng_state, restore_rng_state

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 2-block ViT at 32 px with 8 px patches: 16 patches, of which RSPC occludes 10% (2).
TINY_MODEL = [
    '--model', 'vit_tiny_patch16_224', '--num-classes', '10',
    '--model-kwargs', 'img_size=32', 'patch_size=8', 'depth=2', 'embed_dim=32', 'num_heads=2',
]
FAST = ['-b', '8', '-j', '0', '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '1', '--log-interval', '100']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes') / 'data'
    write_image_folder(str(root), num_train=3, num_val=1, img_size=32, seed=0)  # 30 train / 10 val images
    return str(root)


def _env():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    return env


def _run(cmd, **kwargs):
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300, **kwargs)


def _load(path):
    from timm.models._helpers import _torch_load
    return _torch_load(path, weights_only=True)


def _assert_same_tree(a, b, where=''):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), f'tensors differ at {where}'
    elif isinstance(a, dict):
        assert set(a) == set(b), f'keys differ at {where}: {sorted(set(a) ^ set(b))}'
        for k in a:
            _assert_same_tree(a[k], b[k], f'{where}/{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f'lengths differ at {where}'
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f'{where}/{i}')
    else:
        assert a == b, f'values differ at {where}: {a!r} != {b!r}'


def test_cli_one_rspc_epoch_with_yaml_config(data_dir, tmp_path):
    """`timm-rspc train -c cfg.yaml --rspc ...` as a subprocess: config values used, CLI wins, timm's run folder."""
    config = tmp_path / 'cfg.yaml'
    config.write_text(yaml.safe_dump({
        'model': 'vit_tiny_patch16_224', 'num_classes': 10, 'batch_size': 8, 'workers': 0, 'opt': 'adamw',
        'lr': 1e-3, 'epochs': 5, 'warmup_epochs': 0, 'log_interval': 1, 'smoothing': 0.0,
        'model_kwargs': {'img_size': 32, 'patch_size': 8, 'depth': 2, 'embed_dim': 32, 'num_heads': 2},
    }))
    out = tmp_path / 'out'
    proc = _run([sys.executable, '-m', 'timm_rspc.cli', 'train', '-c', str(config), '--data-dir', data_dir,
                 '--epochs', '1', '--rspc', '--output', str(out), '--experiment', 'run'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / 'run'
    assert {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar'} <= set(
        os.listdir(run))
    assert not [n for n in os.listdir(run) if 'partial' in n or n.startswith('tmp')]
    saved_args = yaml.safe_load((run / 'args.yaml').read_text())
    assert saved_args['epochs'] == 1 and saved_args['opt'] == 'adamw' and saved_args['rspc'] is True
    assert saved_args['model_kwargs']['depth'] == 2
    header, row = (run / 'summary.csv').read_text().strip().splitlines()
    columns = header.split(',')
    for name in ('train_loss', 'train_task_loss', 'train_align_loss', 'train_occluded_fraction', 'eval_top1'):
        assert name in columns
    values = dict(zip(columns, row.split(',')))
    assert float(values['train_occluded_fraction']) == pytest.approx(2 / 16)  # 10% of 16 patches, rounded
    assert float(values['train_align_loss']) > 0
    checkpoint = _load(str(run / 'last.pth.tar'))
    assert checkpoint['epoch'] == 0 and 'task_state' in checkpoint and checkpoint['rng_state']
    # timm's CheckpointSaver entries, plus what an exact resume needs
    assert set(checkpoint) == {'epoch', 'arch', 'optimizer', 'version', 'args', 'state_dict', 'task_state', 'metric',
                               'saver', 'rng_state', 'lr_scheduler'}
    assert checkpoint['arch'] == 'vit_tiny_patch16_224' and checkpoint['version'] == 2
    assert 'Train: 0' in proc.stderr + proc.stdout and 'img/s' in proc.stderr + proc.stdout
    import json
    result = json.loads(proc.stdout.split('--result\n', 1)[1])  # timm train.py's closing block
    assert result[0]['epoch'] == 0
    assert result[0]['train']['align_loss'] == pytest.approx(float(values['train_align_loss']))


def test_yaml_config_keys_are_checked(tmp_path, caplog):
    config = tmp_path / 'cfg.yaml'
    config.write_text('model: resnet18\nbatch-size: 4\nlearning_rate: 0.1\n')
    args, _ = parse_args(['-c', str(config)])
    assert 'ignoring keys that are not flags of this trainer: learning_rate' in caplog.text
    assert not hasattr(args, 'learning_rate') and args.batch_size == 4
    config.write_text('model: resnet18\nbatch-size: 4\n')
    args, _ = parse_args(['-c', str(config), '-b', '6'])
    assert args.model == 'resnet18' and args.batch_size == 6
    with pytest.raises(ConfigError, match='does not exist'):
        parse_args(['-c', str(tmp_path / 'missing.yaml')])


def test_rspc_values_from_a_config_file_are_checked_before_any_work(tmp_path):
    """argparse does not check defaults, and -c values are defaults: preflight checks them with the flags'."""
    from timm_rspc.train.preflight import check_values
    config = tmp_path / 'cfg.yaml'
    config.write_text('model: resnet18\nrspc: true\nrspc-lambda: .nan\n')
    args, _ = parse_args(['-c', str(config)])
    with pytest.raises(ConfigError, match='--rspc-lambda'):
        check_values(args)
    config.write_text('model: resnet18\nrspc: false\nrspc-lambda: .nan\n')
    check_values(parse_args(['-c', str(config)])[0])  # RSPC off: its settings are not used


@pytest.fixture
def one_thread():
    """In-process runs compare bit-exactly with subprocess runs (OMP_NUM_THREADS=1), so use one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_args(data_dir, output, experiment, *extra):
    args, _ = parse_args([*TINY_MODEL, *FAST, '--data-dir', data_dir, '--output', str(output),
                          '--experiment', experiment, *extra])
    return args


def test_kill_and_resume_equals_uninterrupted_run(data_dir, tmp_path, one_thread):
    """A run killed (SIGKILL) after its first epoch and resumed ends bit-identical to one never interrupted:
    model, EMA, optimiser, corruption model and its optimiser, scheduler."""
    common = ['--epochs', '3', '--rspc', '--model-ema', '--model-ema-decay', '0.9', '--mixup', '0.2']
    train(_train_args(data_dir, tmp_path, 'straight', *common))

    killed_dir = tmp_path / 'killed'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'timm_rspc.train', *TINY_MODEL, *FAST, *common, '--data-dir', data_dir,
         '--output', str(tmp_path), '--experiment', 'killed'],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / 'checkpoint-0.pth.tar').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _load(str(killed_dir / 'last.pth.tar'))
    assert first['epoch'] < 2, 'the kill came too late to test anything'

    with pytest.raises(ConfigError, match='already holds a training run'):
        train(_train_args(data_dir, tmp_path, 'killed', *common))
    train(_train_args(data_dir, tmp_path, 'killed', *common, '--resume', str(killed_dir / 'last.pth.tar')))

    straight = _load(str(tmp_path / 'straight' / 'last.pth.tar'))
    resumed = _load(str(killed_dir / 'last.pth.tar'))
    assert straight['epoch'] == resumed['epoch'] == 2
    for key in ('state_dict', 'state_dict_ema', 'task_state', 'optimizer', 'lr_scheduler', 'rng_state'):
        _assert_same_tree(straight[key], resumed[key], key)
    rows = (killed_dir / 'summary.csv').read_text().strip().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == ['0', '1', '2']
    assert (killed_dir / 'args-resume-{}.yaml'.format(first['epoch'] + 1)).exists()


def _summary_lrs(run_dir):
    rows = (run_dir / 'summary.csv').read_text().strip().splitlines()
    columns = rows[0].split(',')
    return {int(row.split(',')[0]): float(dict(zip(columns, row.split(',')))['lr']) for row in rows[1:]}


def test_extending_a_finished_run_follows_the_new_schedule(data_dir, tmp_path, one_thread):
    """`--epochs 1`, then `--epochs 3 --resume last.pth.tar`: epochs 1-2 train at the learning rates of the 3-epoch
    schedule (timm's train.py: rebuilt from the arguments, stepped to the resume epoch), not at the finished 1-epoch
    schedule's 0."""
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    flags = ['--warmup-epochs', '0', '--val-split', '']
    train(_train_args(data_dir, tmp_path, 'run', '--epochs', '1', *flags))
    run = tmp_path / 'run'
    args = _train_args(data_dir, tmp_path, 'run', '--epochs', '3', *flags, '--resume', str(run / 'last.pth.tar'))
    train(args)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    scheduler, _ = create_scheduler_v2(optimizer, **scheduler_kwargs(args))  # stepped per epoch
    expected = {}
    for epoch in (1, 2):
        scheduler.step(epoch)
        expected[epoch] = optimizer.param_groups[0]['lr']
    lrs = _summary_lrs(run)
    assert sorted(lrs) == [0, 1, 2]
    assert {epoch: lrs[epoch] for epoch in (1, 2)} == pytest.approx(expected, rel=1e-12)
    assert expected[1] > expected[2] > 0  # cosine over 3 epochs: 7.5e-4, 2.5e-4


@pytest.mark.filterwarnings('ignore:PlateauLRScheduler is deprecated')  # it saves no counters; the trainer does
def test_plateau_schedule_resumes_exactly(data_dir, tmp_path, one_thread):
    """Past its warmup the plateau scheduler's learning rate lives in the optimiser and its counters in torch's
    scheduler: a resume continues both (before, the rebuilt scheduler put the learning rate back to --warmup-lr for
    the rest of the run)."""
    common = ['--sched', 'plateau', '--patience-epochs', '1', '--decay-rate', '0.5', '--val-split', '']
    train(_train_args(data_dir, tmp_path, 'straight', *common, '--epochs', '4'))
    train(_train_args(data_dir, tmp_path, 'resumed', *common, '--epochs', '2'))
    train(_train_args(data_dir, tmp_path, 'resumed', *common, '--epochs', '4',
                      '--resume', str(tmp_path / 'resumed' / 'last.pth.tar')))
    straight, resumed = (_load(str(tmp_path / run / 'last.pth.tar')) for run in ('straight', 'resumed'))
    for key in ('state_dict', 'optimizer', 'lr_scheduler'):
        _assert_same_tree(straight[key], resumed[key], key)
    assert _summary_lrs(tmp_path / 'resumed') == _summary_lrs(tmp_path / 'straight')


def test_ctrl_c_exits_130_and_names_what_was_saved(data_dir, tmp_path):
    """SIGINT during training: exit status 130 and one line naming the saved epoch and the --resume flag."""
    run = tmp_path / 'run'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'timm_rspc.cli', 'train', *TINY_MODEL, *FAST, '--epochs', '200', '--val-split', '',
         '--data-dir', data_dir, '--output', str(tmp_path), '--experiment', 'run'],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT as at a terminal, even where this test runs in a background job (which ignores it, and a child
        # inherits that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (run / 'last.pth.tar').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert 'Traceback' not in err and '--result' not in out
    last = run / 'last.pth.tar'
    epoch = _load(str(last))['epoch']
    assert err.rstrip().splitlines()[-1] == (
        f'timm-rspc train: interrupted; epoch {epoch} (the last completed) is saved in {last}: continue with '
        f'--resume {last}')


DDP_SCRIPT = textwrap.dedent('''
    import sys, torch
    from timm.utils import unwrap_model
    from timm_rspc.train import parse_args, train
    args, _ = parse_args(sys.argv[2:])
    result = train(args)
    torch.save({'model': unwrap_model(result.task.get_eval_model()).state_dict(),
                'task': result.task.get_task_state()}, f'{sys.argv[1]}/rank{args.rank}.pt')
''')


def test_torchrun_two_processes_gloo_end_identical(data_dir, tmp_path):
    script = tmp_path / 'ddp_train.py'
    script.write_text(DDP_SCRIPT)
    proc = _run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                 str(script), str(tmp_path), *TINY_MODEL, *FAST, '--data-dir', data_dir, '--epochs', '2',
                 '--rspc', '--output', str(tmp_path), '--experiment', 'ddp'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _load(str(tmp_path / 'rank0.pt')), _load(str(tmp_path / 'rank1.pt'))
    _assert_same_tree(rank0, rank1)
    assert os.listdir(tmp_path / 'ddp')  # only rank 0 writes the run folder
    checkpoint = _load(str(tmp_path / 'ddp' / 'last.pth.tar'))
    assert len(checkpoint['rng_state']) == 2  # one RNG state per rank
    _assert_same_tree(checkpoint['state_dict'], rank0['model'])


@pytest.mark.parametrize('amp_dtype', ['float16', 'bfloat16'])
def test_rspc_epoch_under_amp(data_dir, tmp_path, amp_dtype):
    """`--rspc --amp` (float16 is timm's default --amp-dtype) with EMA, grad checkpointing and channels_last; CPU
    autocast gives the dtype mix of a CUDA run."""
    result = train(_train_args(data_dir, tmp_path, amp_dtype, '--epochs', '1', '--rspc', '--amp', '--amp-dtype',
                               amp_dtype, '--model-ema', '--grad-checkpointing', '--channels-last'))
    train_metrics = result.epochs[-1]['train']
    assert all(torch.isfinite(torch.tensor(v)) for v in train_metrics.values())
    assert train_metrics['align_loss'] > 0
    # 2 of 16 patches; C scores in 16-bit under autocast (as in the authors' runs), where ties at the threshold can
    # add a patch, more often in bfloat16's 8-bit mantissa
    assert 0.125 <= train_metrics['occluded_fraction'] < 0.14


@pytest.mark.parametrize('flags, message', [
    (['--data-dir', '/nonexistent/data'], "dataset path '/nonexistent/data' does not exist"),
    (['--model', 'vit_tiny_patch16_244'], "unknown model 'vit_tiny_patch16_244'. Did you mean: vit_tiny_patch16_224"),
    (['--rspc', '--rspc-blocks', '7'], "cannot set up the RSPC task for 'vit_tiny_patch16_224'"),  # 2 blocks
    (['--resume', '/nonexistent/last.pth.tar'], "--resume file '/nonexistent/last.pth.tar' does not exist"),
    (['--epochs', '0'], '--epochs must be at least 1'),
])
def test_bad_input_fails_before_any_output(data_dir, tmp_path, flags, message):
    argv = ['--data-dir', data_dir, *TINY_MODEL, *FAST, '--output', str(tmp_path), '--experiment', 'x', *flags]
    with pytest.raises(ConfigError, match=message.replace('.', r'\.').replace('(', r'\(')):
        train(parse_args(argv)[0])
    assert not (tmp_path / 'x').exists()


def test_existing_run_is_refused_or_incremented(data_dir, tmp_path, capsys, monkeypatch):
    from timm_rspc.cli import main
    import timm.utils
    monkeypatch.setattr(timm.utils, 'setup_default_logging', lambda *args, **kwargs: None)  # no handler on capsys
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'summary.csv').write_text('epoch\n0\n')
    argv = ['train', '--data-dir', data_dir, *TINY_MODEL, *FAST, '--output', str(tmp_path), '--experiment', 'x',
            '--epochs', '1']
    assert main(argv) == 2
    assert 'already holds a training run' in capsys.readouterr().err
    assert (tmp_path / 'x' / 'summary.csv').read_text() == 'epoch\n0\n'
    assert main(argv + ['--output-exists', 'increment', '--val-split', '']) == 0
    assert (tmp_path / 'x-1' / 'last.pth.tar').exists()
    assert (tmp_path / 'x' / 'summary.csv').read_text() == 'epoch\n0\n'


def test_checkpoint_write_failure_keeps_previous_files(tmp_path, monkeypatch):
    """A save that dies half-way leaves last / best as they were and no partial files behind."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    from timm.task import ClassificationTask
    task = ClassificationTask(model, torch.nn.CrossEntropyLoss(), verbose=False)
    saver = AtomicCheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(tmp_path),
                                  recovery_dir=str(tmp_path), task=task, max_history=2)
    saver.save_checkpoint(0, metric=1.0)
    before = {n: (tmp_path / n).read_bytes() for n in ('last.pth.tar', 'model_best.pth.tar')}

    def dying_save(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(OSError, match='disk full'):
        saver.save_checkpoint(1, metric=2.0)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-0.pth.tar', 'last.pth.tar', 'model_best.pth.tar']


def test_summary_rows_append_under_one_header(tmp_path):
    path = str(tmp_path / 'summary.csv')
    append_summary_row(path, 0, {'loss': 2.0, 'align_loss': 0.5}, {'top1': 10.0}, lr=0.1)
    append_summary_row(path, 1, {'loss': 1.5, 'align_loss': 0.4}, {'top1': 20.0}, lr=0.05)
    assert open(path).read().splitlines() == [
        'epoch,train_loss,train_align_loss,eval_top1,lr', '0,2.0,0.5,10.0,0.1', '1,1.5,0.4,20.0,0.05']


def test_rng_state_round_trip():
    import random
    import numpy as np
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
