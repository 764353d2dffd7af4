"""Run folders: claimed by one process at a time (two real processes race for the same folders), temp files unique
per process, stale temp files of killed runs removed on resume, ``--output-exists overwrite`` clears the old run."""
import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from timm_rspc.train import ConfigError
from timm_rspc.train.output import LOCK_NAME, AtomicCheckpointSaver, RunFolderBusy, claim_output_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains into OUT/run0 .. runN-1 (one tiny epoch each) with the trainer's entry point, once GO exists; prints the
# exit status and the error output of each round.
RACER = textwrap.dedent('''
    import contextlib, io, json, os, sys, time
    from timm_rspc.train import main
    data, out, go, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print('ready', flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    outcomes = []
    for i in range(rounds):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(['--data-dir', data, '--model', 'vit_tiny_patch16_224', '--num-classes', '10', '--model-kwargs',
                       'img_size=32', 'patch_size=8', 'depth=1', 'embed_dim=16', 'num_heads=2', '-b', '10', '-j', '0',
                       '--epochs', '1', '--val-split', '', '--output', out, '--experiment', f'run{i}'])
        outcomes.append([rc, err.getvalue()])
    print(json.dumps(outcomes), flush=True)
''')


def _env():
    return dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')


def _args(root, experiment='run', **kwargs):
    return argparse.Namespace(**dict(dict(output=str(root), experiment=experiment, model='m', resume='',
                                          output_exists='error'), **kwargs))


def test_two_trainings_racing_for_the_same_folders(tmp_path):
    """Two trainer processes started together into the same three folders: each time one trains (exit 0) and the
    other stops with one line (exit 2), and the folder holds one run."""
    from timm_rspc.demo.shapes import write_image_folder
    write_image_folder(str(tmp_path / 'data'), num_train=2, num_val=0, img_size=32, seed=0)
    script = tmp_path / 'racer.py'
    script.write_text(RACER)
    go, rounds = tmp_path / 'go', 3
    racers = [subprocess.Popen([sys.executable, str(script), str(tmp_path / 'data'), str(tmp_path / 'out'), str(go),
                                str(rounds)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
              for _ in range(2)]
    for racer in racers:
        assert racer.stdout.readline().strip() == 'ready'
    go.write_text('')
    results = [json.loads(racer.communicate(timeout=300)[0].strip().splitlines()[-1]) for racer in racers]
    for i, ((rc_a, err_a), (rc_b, err_b)) in enumerate(zip(*results)):
        assert sorted([rc_a, rc_b]) == [0, 2], (err_a, err_b)
        errors = (err_a if rc_a == 2 else err_b).splitlines()  # log lines, then the error
        assert errors[-1].startswith('python -m timm_rspc.train: error: output folder ')
        assert not [line for line in errors[:-1] if 'error' in line.lower() or 'Traceback' in line]
        refusal = errors[-1]
        assert 'is in use by another training run (PID ' in refusal or 'already holds a training run' in refusal
        rows = (tmp_path / 'out' / f'run{i}' / 'summary.csv').read_text().strip().splitlines()
        assert [row.split(',')[0] for row in rows] == ['epoch', '0']


# Holds a run folder's lock as RunFolder.claim does (flock, owner line), without importing torch: starts in a blink.
HOLDER = textwrap.dedent('''
    import fcntl, os, sys, time
    os.makedirs(sys.argv[1])
    fd = os.open(os.path.join(sys.argv[1], sys.argv[2]), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f'PID {os.getpid()} on a host'.encode())
    print('claimed', flush=True)
    time.sleep(600)
''')


def test_a_killed_runs_lock_is_free_and_a_live_one_is_not(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(tmp_path / 'run'), LOCK_NAME],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'claimed'
        with pytest.raises(RunFolderBusy, match=f"is in use by another training run \\(PID {holder.pid} on "):
            claim_output_dir(_args(tmp_path, resume='x'), 32)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim_output_dir(_args(tmp_path, resume='x'), 32).release()  # the kernel dropped the dead run's lock


def test_resume_removes_stale_partial_files_and_overwrite_the_old_run(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    old = ['args.yaml', 'args-resume-2.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar',
           'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar', 'recovery-2-5.pth.tar']
    stale = ['last.pth.tar.partial-4242', 'summary.csv.partial-17']
    for name in old + stale + ['notes.txt']:
        (run / name).write_text(name)

    with pytest.raises(ConfigError, match='already holds a training run'):
        claim_output_dir(_args(tmp_path), 32)
    claim_output_dir(_args(tmp_path, resume=str(run / 'last.pth.tar')), 32).release()
    assert sorted(os.listdir(run)) == sorted(old + ['notes.txt', LOCK_NAME])

    claim_output_dir(_args(tmp_path, output_exists='overwrite'), 32).release()
    assert sorted(os.listdir(run)) == sorted(['notes.txt', LOCK_NAME])  # what is not a run file stays


def test_increment_skips_held_and_filled_folders(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'summary.csv').write_text('epoch\n')
    held = claim_output_dir(_args(tmp_path, 'run-1'), 32)
    try:
        folder = claim_output_dir(_args(tmp_path, output_exists='increment'), 32)
        assert folder.path == str(tmp_path / 'run-2')
        folder.release(remove_if_unused=True)
        assert not (tmp_path / 'run-2').exists()  # claimed, never written into: removed again
    finally:
        held.release()


def test_checkpoint_temp_files_are_per_process(tmp_path, monkeypatch):
    """timm's saver writes tmp.pth.tar (one name for every process); here only NAME.partial-<pid> is written."""
    from timm.task import ClassificationTask
    model = torch.nn.Linear(2, 2)
    task = ClassificationTask(model, torch.nn.CrossEntropyLoss(), verbose=False)
    saver = AtomicCheckpointSaver(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                  checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), task=task)
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda src, dst: (renamed.append((os.path.basename(src),
                                                                         os.path.basename(dst))), replace(src, dst)))
    saver.save_checkpoint(0, metric=1.0)
    saver.save_recovery(0, batch_idx=3)
    assert renamed[0] == (f'tmp.pth.tar.partial-{os.getpid()}', 'last.pth.tar')
    assert (f'recovery_tmp.pth.tar.partial-{os.getpid()}', 'recovery-0-3.pth.tar') in renamed
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-0.pth.tar', 'last.pth.tar', 'model_best.pth.tar',
                                            'recovery-0-3.pth.tar']


def _finished_run(folder):
    folder.mkdir(parents=True)
    for name in ('args.yaml', 'summary.csv', 'last.pth.tar', 'checkpoint-1.pth.tar'):
        (folder / name).write_text(f'{folder.name}/{name}')
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_resume_continues_in_the_checkpoints_folder_or_a_new_one_never_another_runs(tmp_path):
    """Without --output / --experiment a resume continues in the checkpoint's folder; an explicit folder holding
    another run is refused (P's files untouched) unless --output-exists says otherwise; a new one is taken."""
    q_files = _finished_run(tmp_path / 'Q')
    p_files = _finished_run(tmp_path / 'P')
    resume = str(tmp_path / 'Q' / 'last.pth.tar')

    folder = claim_output_dir(_args('', experiment='', output='', resume=resume), 32)
    assert folder.path == str(tmp_path / 'Q')
    folder.release()

    with pytest.raises(ConfigError) as refused:
        claim_output_dir(_args(tmp_path, 'P', resume=resume), 32)
    assert str(refused.value) == (
        f"output folder '{tmp_path / 'P'}' already holds another training run (args.yaml, summary.csv, last.pth.tar): "
        f"--resume continues in the checkpoint's folder '{tmp_path / 'Q'}' without --output / --experiment, or in a "
        "new folder: choose another --experiment, or pass --output-exists increment (or overwrite, which deletes "
        "that run's files).")
    assert {name: (tmp_path / 'P' / name).read_bytes() for name in p_files} == p_files

    folder = claim_output_dir(_args(tmp_path, 'P', resume=resume, output_exists='increment'), 32)
    assert folder.path == str(tmp_path / 'P-1')
    folder.release()
    folder = claim_output_dir(_args(tmp_path, 'new', resume=resume), 32)
    assert folder.path == str(tmp_path / 'new')
    folder.release()
    assert {name: (tmp_path / 'Q' / name).read_bytes() for name in q_files} == q_files


def test_a_config_files_folder_does_not_redirect_a_resume(tmp_path):
    """`-c out/r1/args.yaml --resume out/r1/last.pth.tar`: the config's output / experiment name the folder the run
    was started in; the resume continues in the checkpoint's folder unless the command line names one."""
    from timm_rspc.train import parse_args
    config = tmp_path / 'args.yaml'
    config.write_text('output: elsewhere\nexperiment: r1\nmodel: resnet18\n')
    resume = str(tmp_path / 'r1' / 'last.pth.tar')
    args, _ = parse_args(['-c', str(config), '--resume', resume])
    assert (args.output, args.experiment, args.model) == ('', '', 'resnet18')
    args, _ = parse_args(['-c', str(config), '--resume', resume, '--experiment', 'r2'])
    assert (args.output, args.experiment) == ('elsewhere', 'r2')
    args, _ = parse_args(['-c', str(config)])  # a new run: the config's folder applies
    assert (args.output, args.experiment) == ('elsewhere', 'r1')


def test_a_run_that_died_before_its_first_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'args.yaml').write_text('model: m\n')
    with pytest.raises(ConfigError) as refused:
        claim_output_dir(_args(tmp_path), 32)
    assert str(refused.value) == (
        f"output folder '{tmp_path / 'run'}' already holds a training run that stopped before its first checkpoint "
        "(args.yaml, no last.pth.tar): there is nothing to resume. Pass --output-exists overwrite to reuse the "
        "folder, or choose another --experiment / --output-exists increment.")
    claim_output_dir(_args(tmp_path, output_exists='overwrite'), 32).release()
    assert os.listdir(tmp_path / 'run') == [LOCK_NAME]
