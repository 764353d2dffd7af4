"""`timm-rspc bench` as a user runs it: the model built the way it was trained, partial and empty ImageNet-C, Ctrl-C,
and every foreseeable mistake as one line with exit status 2, caught before the run folder exists."""
import json
import os
import shlex

import pytest
import timm
import torch

from bench_fixtures import interrupt_after, timm_checkpoint, write_imagenet_c, write_wnid_folder
from timm_rspc.bench import run_benchmark
from timm_rspc.bench.evaluate import Evaluator
from timm_rspc.cli import main

MODEL = 'bench_test_mean_pixel'
VIT = 'vit_tiny_patch16_224'
TINY = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2)  # a 1000-class ViT small enough for CPU tests
QUIET = ['-j', '0', '--no-progress', '--no-plot']


@pytest.fixture(scope='module')
def val(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench_cli') / 'val'
    write_wnid_folder(str(root), [(2, 2), (3, 3), (4, 4), (4, 5)])  # top-1 75 %
    return str(root)


def one_error_line(capsys, code, error):
    assert error.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def bench(argv, capsys, code=2):
    with pytest.raises(SystemExit) as error:
        main(['bench'] + argv)
    return one_error_line(capsys, code, error)


def settings(folder):
    with open(os.path.join(folder, 'settings.json')) as f:
        return json.load(f)


# --- the model the way it was trained -----------------------------------------------------------------------------

def _tiny_vit_state(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(VIT, **TINY, **kwargs).state_dict()


@pytest.mark.parametrize('where', ['checkpoint', 'args.yaml'])
def test_checkpoint_build_arguments_build_the_model(val, tmp_path, where):
    # timm-rspc train --model vit_tiny_patch16_224 --model-kwargs img_size=32 ...: stored args, or only args.yaml
    args = dict(model=VIT, model_kwargs=dict(TINY, img_size=32), num_classes=1000, img_size=32, input_size=None)
    path = str(tmp_path / 'last.pth.tar')
    if where == 'checkpoint':
        timm_checkpoint(path, _tiny_vit_state(img_size=32), args)
    else:
        import yaml
        torch.save(_tiny_vit_state(img_size=32), path)
        (tmp_path / 'args.yaml').write_text(yaml.safe_dump(args))
    out = run_benchmark(VIT, str(tmp_path / 'out'), checkpoint=path, imagenet=val, workers=0, progress=False,
                        plot=False, verbose=False)
    s = out['settings']
    assert s['input_size'] == [3, 32, 32] and s['model_kwargs'] == dict(TINY, img_size=32)
    assert s['build_args_from'] == os.path.abspath(path if where == 'checkpoint' else str(tmp_path / 'args.yaml'))


def test_train_py_img_size_of_a_dynamic_model_is_the_evaluated_size(val, tmp_path):
    # timm train.py --img-size 32 --model-kwargs dynamic_img_size=True: built at 224, trained and evaluated at 32
    path = str(tmp_path / 'ckpt.pth.tar')
    timm_checkpoint(path, _tiny_vit_state(dynamic_img_size=True),
                    dict(model=VIT, model_kwargs=dict(TINY, dynamic_img_size=True), num_classes=1000, img_size=32))
    assert main(['bench', '--model', VIT, '--checkpoint', path, '--imagenet', val, '--output', str(tmp_path / 'a')]
                + QUIET) == 0
    assert settings(tmp_path / 'a')['input_size'] == [3, 32, 32]
    # explicit flags win (timm validate.py's --input-size)
    assert main(['bench', '--model', VIT, '--checkpoint', path, '--input-size', '3', '48', '48', '--imagenet', val,
                 '--output', str(tmp_path / 'b')] + QUIET) == 0
    assert settings(tmp_path / 'b')['input_size'] == [3, 48, 48]


def test_deit_style_release_args_give_the_size(val, tmp_path):
    # The authors' RVT / FAN releases: {'model', 'args'} with args.input_size one int (DeiT's main.py)
    import argparse
    path = str(tmp_path / 'release.pth')
    torch.save({'model': _tiny_vit_state(dynamic_img_size=True),
                'args': argparse.Namespace(model=VIT, input_size=32, nb_classes=1000)}, path)
    out = run_benchmark(VIT, str(tmp_path / 'out'), checkpoint=path, model_kwargs=dict(TINY, dynamic_img_size=True),
                        imagenet=val, workers=0, progress=False, plot=False, verbose=False)
    assert out['settings']['input_size'] == [3, 32, 32]


def test_model_kwargs_img_size_is_the_evaluated_size(val, tmp_path, capsys):
    kwargs = ['img_size=32'] + [f'{k}={v}' for k, v in TINY.items()]
    # was: AssertionError: Input height (224) doesn't match model (32) (a traceback)
    assert main(['bench', '--model', VIT, '--model-kwargs', *kwargs, '--imagenet', val, '--output',
                 str(tmp_path / 'fixed')] + QUIET) == 0
    # was: silently evaluated at 224, settings.json input_size [3, 224, 224] beside img_size 32
    assert main(['bench', '--model', VIT, '--model-kwargs', *kwargs, 'dynamic_img_size=True', '--imagenet', val,
                 '--output', str(tmp_path / 'dynamic')] + QUIET) == 0
    for name in ('fixed', 'dynamic'):
        s = settings(tmp_path / name)
        assert s['input_size'] == s['data_config']['input_size'] == [3, 32, 32]
    assert 'at 3x32x32' in capsys.readouterr().out
    # a size the model cannot take: one line before the run folder exists
    line = bench(['--model', VIT, '--model-kwargs', *kwargs, '--img-size', '48', '--imagenet', val,
                  '--output', str(tmp_path / 'x')], capsys)
    assert 'does not take 3 x 48 x 48 input' in line and not (tmp_path / 'x').exists()


def test_use_ema_and_num_classes(val, tmp_path, capsys):
    # The test model's 'scale' weight: 1 predicts right, -1 predicts the farthest class (always wrong).
    path = str(tmp_path / 'ema.pth.tar')
    timm_checkpoint(path, {'scale': torch.tensor(1.)}, dict(model=MODEL, num_classes=1000),
                    ema={'scale': -torch.ones(())})
    plain = run_benchmark(MODEL, str(tmp_path / 'a'), checkpoint=path, imagenet=val, workers=0, progress=False,
                          plot=False, verbose=False)
    assert main(['bench', '--model', MODEL, '--checkpoint', path, '--use-ema', '--imagenet', val,
                 '--output', str(tmp_path / 'b')] + QUIET) == 0
    with open(tmp_path / 'b' / 'results.json') as f:
        ema = json.load(f)
    assert plain['summary']['imagenet']['top1'] == 75.0 and ema['summary']['imagenet']['top1'] == 0.0
    assert ema['settings']['weights']['weights'] == 'ema'
    line = bench(['--model', MODEL, '--checkpoint', path, '--num-classes', '10', '--imagenet', val,
                  '--output', str(tmp_path / 'c')], capsys)
    assert 'this model has 10 classes' in line  # --num-classes wins over the stored num_classes
    line = bench(['--model', MODEL, '--pretrained', '--use-ema', '--imagenet', val, '--output', str(tmp_path / 'd')],
                 capsys)
    assert '--use-ema' in line and '--checkpoint' in line


# --- ImageNet-C: partial and empty --------------------------------------------------------------------------------

def test_empty_imagenet_c_with_allow_partial_is_an_error(tmp_path, capsys):
    (tmp_path / 'imagenet-c').mkdir()
    line = bench(['--model', MODEL, '--imagenet-c', str(tmp_path / 'imagenet-c'), '--allow-partial',
                  '--output', str(tmp_path / 'out')] + QUIET, capsys)
    assert "holds none of ImageNet-C's splits" in line and not (tmp_path / 'out').exists()


def test_partial_imagenet_c_is_a_marked_table_and_plot(tmp_path, capsys, monkeypatch):
    root = tmp_path / 'imagenet-c'
    write_imagenet_c(str(root), skip=('snow', 'fog/3'))
    assert main(['bench', '--model', MODEL, '--imagenet-c', str(root), '--allow-partial', '--output',
                 str(tmp_path / 'out'), '-j', '0', '--no-progress', '--no-plot']) == 0
    printed = capsys.readouterr().out
    assert 'ImageNet-C is PARTIAL (missing snow, fog/3): no mCE' in printed
    header, _, row = printed.split('ImageNet-C PARTIAL: ')[1].splitlines()[1:4]
    assert 'gaussian_noise' in header and 'fog' in header and 'snow' not in header
    assert '50.00*' in row  # fog: 4 of 5 severities, marked
    assert 'not evaluated at any severity: snow' in printed
    with open(tmp_path / 'out' / 'results.json') as f:
        c = json.load(f)['summary']['imagenet_c']
    assert c['partial'] and 'mce' not in c and c['missing'] == ['snow', 'fog']  # ImageNet-C's order
    assert c['missing_splits'] == [f'snow/{s}' for s in range(1, 6)] + ['fog/3']
    assert c['error']['fog'] == 50.0 and c['error_per_severity']['fog'][2] is None and 'fog' not in c['ce']
    assert c['ce']['frost'] == pytest.approx(100 * 0.5 / 0.826572)
    # results.png keeps every corruption on the axis and marks the missing ones
    pytest.importorskip('matplotlib')
    from matplotlib.figure import Figure
    from timm_rspc.bench.report import write_plot
    seen = {}

    def capture(fig, path, **kwargs):
        ax = fig.axes[0]
        seen['ticks'] = [t.get_text() for t in ax.get_xticklabels()]
        seen['texts'] = [t.get_text() for t in ax.texts] + [ax.get_ylabel(), fig._suptitle.get_text()]
    monkeypatch.setattr(Figure, 'savefig', capture)
    with open(tmp_path / 'out' / 'results.json') as f:
        assert write_plot(str(tmp_path / 'p.png'), json.load(f)['summary'], MODEL)
    assert 'snow' in seen['ticks'] and len(seen['ticks']) == 15
    assert 'not evaluated' in seen['texts'] and any('PARTIAL (no mCE), missing snow, fog/3' in t for t in seen['texts'])


# --- Ctrl-C and failed runs ---------------------------------------------------------------------------------------

def test_ctrl_c_exits_130_with_one_line_and_the_resume_command(tmp_path, capsys, monkeypatch):
    root = tmp_path / 'imagenet-c'
    write_imagenet_c(str(root))
    original = interrupt_after(monkeypatch, 'top1_correct', 3)
    out = str(tmp_path / 'out')
    line = bench(['--model', MODEL, '--imagenet-c', str(root), '--output', out, '-b', '2'] + QUIET, capsys, code=130)
    assert f"3 of 75 splits finished and saved in '{out}'" in line
    command = shlex.split(line.split('continue with: ')[1])
    assert command[:2] == ['timm-rspc', 'bench'] and command[-1] == '--resume' and '--batch-size' in command
    monkeypatch.setattr(Evaluator, 'top1_correct', original)
    assert main(command[1:]) == 0
    assert len(os.listdir(os.path.join(out, 'splits'))) == 75 and os.path.exists(os.path.join(out, 'results.json'))


def test_a_run_with_no_finished_split_needs_no_resume(val, tmp_path, capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Evaluator, 'top1_correct', interrupted)
    out = str(tmp_path / 'out')
    line = bench(['--model', MODEL, '--imagenet', val, '--output', out] + QUIET, capsys, code=130)
    assert 'nothing saved, run the same command again' in line
    monkeypatch.undo()
    assert main(['bench', '--model', MODEL, '--imagenet', val, '--output', out] + QUIET) == 0


def test_ctrl_c_in_the_second_model_resumes_both(val, tmp_path, capsys, monkeypatch):
    original, calls = Evaluator.top1_correct, {'n': 0}

    def interrupted_in_the_second(self, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Evaluator, 'top1_correct', interrupted_in_the_second)
    out = str(tmp_path / 'out')
    line = bench(['--model', MODEL, '--model', MODEL, '--imagenet', val, '--output', out] + QUIET, capsys, code=130)
    assert f'1 model(s) finished ({MODEL}); continue with: ' in line
    monkeypatch.undo()
    assert main(shlex.split(line.split('continue with: ')[1])[1:]) == 0  # the finished one is read, not redone
    assert '75.00 (+0.00)' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['-b', '0'], '--batch-size must be at least 1'),
    (['-j', '-1'], '--workers must be 0 or more'),
    (['--device', 'cuda'], '--device cuda is not usable here'),
    (['--device', 'nonsense'], '--device nonsense is not usable here'),
])
def test_mistakes_are_caught_before_the_run_folder_exists(val, tmp_path, capsys, argv, message):
    if argv[-1] == 'cuda' and torch.cuda.is_available():
        pytest.skip('a GPU is available')
    out = tmp_path / 'out'
    line = bench(['--model', MODEL, '--imagenet', val, '--output', str(out), '--no-progress'] + argv, capsys)
    assert message in line and not out.exists()


# --- one line, exit 2 ---------------------------------------------------------------------------------------------

def test_missing_files_name_their_flag(val, tmp_path, capsys):
    nope = str(tmp_path / 'nope')
    base = ['--model', MODEL, '--output', str(tmp_path / 'out')]
    for extra, flag in ((['--imagenet', val, '--checkpoint', nope], '--checkpoint file'),
                        (['--imagenet', val, '--imagenet-p-reference', nope], '--imagenet-p-reference file'),
                        (['--imagenet-c', val, '--imagenet-c-labels', nope], '--imagenet-c-labels file'),
                        (['--imagenet-a', nope], '--imagenet-a folder')):
        line = bench(base + extra, capsys)
        assert f"{flag} '{nope}' does not exist" in line
    assert not (tmp_path / 'out').exists()


def test_unknown_model_suggests_timm_names(val, tmp_path, capsys):
    line = bench(['--model', 'vit_tiny_patch16_22', '--imagenet', val], capsys)
    assert 'Did you mean: vit_tiny_patch16_224' in line and 'timm-rspc models' not in line


def test_timm_flag_spellings(val, tmp_path, capsys):
    # --amp + --amp-dtype (timm's), the old --amp bf16, --model repeated or with several names
    assert main(['bench', '--model', MODEL, '--model', MODEL, '--amp', '--amp-dtype', 'bfloat16', '--imagenet', val,
                 '--output', str(tmp_path / 'a')] + QUIET) == 0
    assert settings(tmp_path / 'a' / f'1-{MODEL}')['amp'] == 'bfloat16'
    assert main(['bench', '-m', MODEL, '--amp', '--imagenet', val, '--output', str(tmp_path / 'b')] + QUIET) == 0
    assert settings(tmp_path / 'b')['amp'] == 'float16'
    assert main(['bench', '--model', MODEL, MODEL, '--amp', 'bf16', '--imagenet', val, '--output',
                 str(tmp_path / 'c')] + QUIET) == 0
    assert settings(tmp_path / 'c' / f'1-{MODEL}')['amp'] == 'bfloat16'


# --- compare: rows told apart, --label --------------------------------------------------------------------------

def test_compare_rows_of_one_architecture_are_distinct_and_take_labels(val, tmp_path, capsys):
    """Before: two checkpoints of one architecture were both 'bench_test_mean_pixel [model_best.pth.tar]'."""
    results = []
    for run, scale in (('runA', 1.), ('runB', -1.)):
        path = tmp_path / run / 'model_best.pth.tar'
        path.parent.mkdir()
        timm_checkpoint(str(path), {'scale': torch.tensor(scale)}, dict(model=MODEL, num_classes=1000))
        assert main(['bench', '--model', MODEL, '--checkpoint', str(path), '--imagenet', val,
                     '--output', str(tmp_path / 'bench' / run)] + QUIET) == 0
        results.append(str(tmp_path / 'bench' / run / 'results.json'))
    capsys.readouterr()

    def rows(argv):
        assert main(['bench', '--compare'] + argv) == 0
        return [line.split('  ')[0] for line in capsys.readouterr().out.splitlines()[2:4]]
    assert rows(results) == [f'{MODEL} [runA/model_best.pth.tar]', f'{MODEL} [runB/model_best.pth.tar]']
    assert rows(results + ['--label', 'baseline', 'RSPC']) == ['baseline', 'RSPC']
    assert rows([results[0], results[0]]) == [f'{MODEL} [model_best.pth.tar] #1',
                                              f'{MODEL} [model_best.pth.tar] #2']  # the same file twice
    line = bench(['--compare'] + results + ['--label', 'only-one'], capsys)
    assert '2 --compare results but 1 --label' in line
    line = bench(['--compare'] + results + ['--label', 'same', 'same'], capsys)
    assert "distinct --label values, got ['same', 'same']" in line
    # several --model in one run: their table takes the labels too
    assert main(['bench', '--model', MODEL, MODEL, '--checkpoint', str(tmp_path / 'runA' / 'model_best.pth.tar'),
                 str(tmp_path / 'runB' / 'model_best.pth.tar'), '--label', 'plain', 'flipped', '--imagenet', val,
                 '--output', str(tmp_path / 'two')] + QUIET) == 0
    table = capsys.readouterr().out.split('\n\n')[-1].splitlines()
    assert table[2].startswith('plain ') and table[3].startswith('flipped ') and '(-75.00)' in table[3]
    line = bench(['--model', MODEL, MODEL, '--label', 'x', '--imagenet', val], capsys)
    assert '2 --model but 1 --label' in line


def test_compare_pretrained_twice_names_the_run_folders():
    from timm_rspc.bench.compare import default_labels
    results = [{'model': MODEL, 'settings': {'weights': {'random_init': True}}, 'summary': {}}] * 2
    assert default_labels(results, ['out/bench/a/results.json', 'out/bench/b/results.json']) == [
        f'{MODEL} [random init] (a)', f'{MODEL} [random init] (b)']
    assert default_labels(results[:1] + [dict(results[0], model=VIT)]) == [MODEL, VIT]


# --- logs -------------------------------------------------------------------------------------------------------

def test_bench_log_file_has_no_carriage_returns(val, tmp_path):
    """Before: tqdm's carriage-return progress went into log files; now bars only on a terminal, one line a split."""
    import re
    import subprocess
    import sys
    write_imagenet_c(str(tmp_path / 'c'))
    tests = os.path.dirname(os.path.abspath(__file__))
    code = 'import sys, bench_fixtures; from timm_rspc.cli import main; sys.exit(main(["bench"] + sys.argv[1:]))'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([tests, os.environ.get('PYTHONPATH', '')]))
    log = tmp_path / 'bench.log'
    with open(log, 'w') as f:  # no TTY, as under nohup, a scheduler or `> log 2>&1`; progress bars not switched off
        proc = subprocess.run(
            [sys.executable, '-c', code, '--model', MODEL, '--imagenet', val, '--imagenet-c', str(tmp_path / 'c'),
             '-j', '0', '-b', '2', '--no-plot', '--output', str(tmp_path / 'out')],
            stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, timeout=300)
    text = log.read_bytes().decode()
    assert proc.returncode == 0, text[-3000:]
    assert '\r' not in text and '\x1b[' not in text
    assert re.search(r'^imagenet/all +top-1 +75\.00%  \(\d+ images\)$', text, flags=re.M)
    assert len(re.findall(r'^imagenet_c/\w+/[1-5] +top-1 ', text, flags=re.M)) == 75  # one line per split


def test_use_ema_without_ema_weights_names_the_flag(tmp_path, capsys):
    """bench / analyze say `--use-ema`, their flag (it read "Load without use_ema.", a Python argument)."""
    import timm
    from timm_rspc.cli import main
    path = tmp_path / 'plain.pth.tar'
    torch.save({'state_dict': timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=1,
                                                num_classes=10).state_dict()}, path)
    with pytest.raises(SystemExit) as exit_:
        main(['bench', '--model', 'vit_tiny_patch16_224', '--checkpoint', str(path), '--use-ema',
              '--model-kwargs', 'img_size=32', 'patch_size=8', 'depth=1', '--num-classes', '10',
              '--imagenet-a', str(tmp_path), '--output', str(tmp_path / 'out')])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith('drop --use-ema to use its non-EMA weights.') and len(err.splitlines()) == 1
