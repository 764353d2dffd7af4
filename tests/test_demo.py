"""The demo end to end in --quick mode (real training of both models, real analyses), and its data generator."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from timm_rspc.demo.shapes import CLASS_NAMES, render_class, write_image_folder


def test_quick_demo_writes_table_json_and_plot(tmp_path, capsys):
    from timm_rspc.cli import main
    out, data = tmp_path / 'demo', tmp_path / 'data'
    assert main(['demo', '--quick', '--output', str(out), '--data-dir', str(data)]) == 0
    printed = capsys.readouterr().out
    assert 'baseline |' in printed and 'RSPC     |' in printed and 'seeds: data 0, training 42' in printed
    assert 'Attention stability' in printed and 'pgd' in printed
    report = json.loads((out / 'demo.json').read_text())
    assert [m['name'] for m in report['models']] == ['baseline', 'RSPC']
    for m in report['models']:
        for kind in ('clean', 'random', 'worst_case'):
            assert 0 <= m[kind]['accuracy'] <= 100 and 0 <= m[kind]['confidence'] <= 100
        assert m['drop']['random']['accuracy'] == pytest.approx(m['clean']['accuracy'] - m['random']['accuracy'])
    assert report['seeds'] == {'data': 0, 'training': 42, 'evaluation': 1234}
    # The table's columns are the sensitivity analysis' noise occlusion and worst case, on the same images.
    sensitivity = report['sensitivity']
    assert sensitivity['num_images'] == 60 and sensitivity['patches_per_image'] == 2
    for m in report['models']:
        perturbed = sensitivity['models'][m['name']]['perturbed']
        assert m['random']['accuracy'] == perturbed['noise_occlusion']['accuracy']
        assert m['worst_case']['confidence'] == perturbed['worst_case']['confidence']
        assert set(perturbed) == {'noise_occlusion', 'worst_case', 'pgd', 'gaussian_noise', 'impulse_noise',
                                  'gaussian_blur', 'brightness', 'fog', 'contrast', 'pixelate'}
        layers = report['attention']['models'][m['name']]['layers']
        assert len(layers) == 2 and all(layer['js'] > 0 for layer in layers)
    assert (out / 'baseline' / 'last.pth.tar').exists() and (out / 'rspc' / 'last.pth.tar').exists()
    # `analyze --demo-run` recomputes the demo's attention numbers from its saved models: same masks, noise, batches.
    assert main(['analyze', 'attention', '--demo-run', str(out), '--workers', '0', '--grid-images', '0',
                 '--output', str(tmp_path / 'attention')]) == 0
    again = json.loads((tmp_path / 'attention' / 'analysis.json').read_text())
    assert again['models'] == report['attention']['models']
    pytest.importorskip('matplotlib')
    for png in ('demo.png', 'sensitivity.png', 'attention.png', 'attention_grid.png'):
        assert (out / png).read_bytes()[:4] == b'\x89PNG'
    # A second demo into the same folder is refused; nothing there is touched.
    before = (out / 'demo.json').read_bytes()
    assert main(['demo', '--quick', '--output', str(out), '--data-dir', str(data)]) == 2
    assert (out / 'demo.json').read_bytes() == before


def test_shapes_are_deterministic_and_distinct(tmp_path):
    a = render_class('triangle', 4, 32, torch.Generator().manual_seed(3))
    b = render_class('triangle', 4, 32, torch.Generator().manual_seed(3))
    assert a.dtype == torch.uint8 and a.shape == (4, 32, 32, 3) and torch.equal(a, b)
    root = tmp_path / 'data'
    write_image_folder(str(root), 2, 1, 16, seed=0)
    assert sorted(os.listdir(root / 'train')) == sorted(CLASS_NAMES)
    assert len(os.listdir(root / 'validation' / 'circle')) == 1
    assert write_image_folder(str(root), 2, 1, 16, seed=0) == (str(root), False)  # reused as is
    with pytest.raises(FileExistsError, match='different generated data set'):
        write_image_folder(str(root), 3, 1, 16, seed=0)


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ctrl_c_stops_the_whole_demo(tmp_path):
    """Ctrl-C while the baseline trains: no RSPC training, no analyses, exit status 130 and one line; before, the
    demo went on to train RSPC and analyse the unfinished models."""
    out = tmp_path / 'demo'
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.Popen(
        [sys.executable, '-m', 'timm_rspc.cli', 'demo', '--quick', '--epochs', '200', '--output', str(out),
         '--data-dir', str(tmp_path / 'data')],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT as at a terminal, even where this test runs in a background job (which ignores it, and a child
        # inherits that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / 'baseline' / 'args.yaml').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert 'Traceback' not in stderr and 'the last completed epoch is in' not in stderr and 'baseline |' not in stdout
    assert stderr.rstrip().splitlines()[-1] == (
        f"timm-rspc demo: interrupted: stopped before the report; '{out}' holds only what was finished (the demo "
        "does not resume: run it again with a new --output).")
    assert sorted(os.listdir(out)) == ['baseline']


def test_quick_demo_log_has_one_result_block_per_training_run(tmp_path):
    """`timm-rspc demo --quick > log 2>&1`: each training run's --result block right after that run's log, once.

    Before: stdout (the blocks) is block-buffered without a terminal while the log (stderr) is not, so the
    baseline's block landed inside or after the RSPC run's log, two blocks interleaved with the wrong run.
    """
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.pop('PYTHONUNBUFFERED', None)  # as for a user: stdout buffered when it is a file
    log = tmp_path / 'demo.log'
    with open(log, 'w') as f:
        proc = subprocess.run(
            [sys.executable, '-m', 'timm_rspc.cli', 'demo', '--quick', '--output', str(tmp_path / 'demo'),
             '--data-dir', str(tmp_path / 'data')],
            cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    runs = text.split('Training with one process')[1:]
    assert len(runs) == 2 and text.count('--result\n') == 2
    for run, name in zip(runs, ('baseline', 'rspc')):
        assert f"Output folder: {tmp_path / 'demo' / name}." in run
        assert run.count('--result\n') == 1, run
        before, block = run.split('--result\n')
        assert 'Best top1' in before  # after the run's own last log line
        epochs = json.JSONDecoder().raw_decode(block)[0]
        assert ('align_loss' in epochs[-1]['train']) == (name == 'rspc')  # the block of this run
