"""``timm-rspc corrupt SRC DST`` (a saved ImageNet-C-layout tree) and the command line of ``bench --corrupt``: the
round trip tree -> ``bench --imagenet-c``, the files against the reference's JPEG settings, resume, Ctrl-C, a DST
that is not ours, and every bad input as one line with nothing written."""
import json
import os
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import timm_rspc.bench.corrupt_tree as corrupt_tree
from bench_fixtures import WNIDS, interrupt_after, save_gray, write_wnid_folder
from timm_rspc.cli import main

MODEL = 'bench_test_mean_pixel'
PICK = ['--corruptions', 'brightness,contrast,gaussian_noise', '--severities', '1,3']
QUIET = ['-j', '0', '--no-progress']


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp('corrupt_cli') / 'val'
    write_wnid_folder(str(root), [(2, 2), (3, 3), (4, 5), (6, 6)])  # uniform grays: JPEG keeps them exactly
    return str(root)


def one_error_line(capsys, code, argv):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def tree(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), 'rb').read()
            for d, _, files in os.walk(root) for f in files if f not in ('.timm-rspc.lock',)}


def test_tree_round_trip_through_bench(src, tmp_path, capsys):
    dst = str(tmp_path / 'val-c')
    assert main(['corrupt', src, dst] + PICK + QUIET) == 0
    assert f'--imagenet-c {dst} --allow-partial' in capsys.readouterr().out
    files = tree(dst)
    expected = {f'{c}/{s}/{WNIDS[k]}/img_{i:03d}.JPEG' for c in ('brightness', 'contrast', 'gaussian_noise')
                for s in (1, 3) for i, k in enumerate((2, 3, 4, 6))}
    assert set(files) == expected | {'corrupt.json'}
    manifest = json.loads(files['corrupt.json'])
    assert (manifest['resize'], manifest['crop'], manifest['jpeg_quality']) == (256, 224, 85)
    # A file is the source through Resize(256) + CenterCrop(224), corrupted with the image's own generator,
    # truncated to 8 bits and saved by Pillow as JPEG quality 85 (4:2:0): decoded, it is libjpeg's round trip.
    from timm_rspc.bench.on_the_fly import OnTheFlyCorruption
    from timm_rspc.corruptions import jpeg_round_trip
    for i, k in ((0, 2), (2, 4)):
        with Image.open(os.path.join(src, WNIDS[k], f'img_{i:03d}.JPEG')) as image:
            clean = torch.from_numpy(np.array(image.convert('RGB').resize((224, 224), Image.BILINEAR)))
        clean = clean.permute(2, 0, 1)[None].float() / 255  # a uniform image: any resize gives the same pixels
        corrupted = OnTheFlyCorruption('gaussian_noise', 3, 0)(clean, [i]).float() / 255
        with Image.open(os.path.join(dst, 'gaussian_noise', '3', WNIDS[k], f'img_{i:03d}.JPEG')) as saved:
            assert saved.format == 'JPEG' and saved.size == (224, 224)
            decoded = torch.from_numpy(np.array(saved.convert('RGB'))).permute(2, 0, 1)[None]
        assert torch.equal(decoded, (jpeg_round_trip(corrupted, 85) * 255).round().to(torch.uint8))
    # bench reads the tree as ImageNet-C, with the same numbers as the same corruptions generated on the fly (the
    # default JPEG quality 85 round trip on the device is the saved files' own, bit for bit)
    common = ['bench', '--model', MODEL, '--no-plot'] + QUIET
    assert main(common + ['--imagenet-c', dst, '--allow-partial', '--output', str(tmp_path / 'saved')]) == 0
    assert main(common + ['--corrupt', src, '--output', str(tmp_path / 'fly')] + PICK) == 0
    saved = json.loads((tmp_path / 'saved' / 'results.json').read_text())['splits']
    fly = json.loads((tmp_path / 'fly' / 'results.json').read_text())['splits']
    assert len(fly) == 6
    for split in (k.split('/', 1)[1] for k in fly):
        assert saved[f'imagenet_c/{split}'] == fly[f'corrupt/{split}'] and saved[f'imagenet_c/{split}']['total'] == 4
    out = capsys.readouterr().out
    assert 'corrupted mean error' in out and 'no CE / mCE' in out


def test_ctrl_c_then_the_same_command_finishes_the_same_tree(src, tmp_path, capsys, monkeypatch):
    argv = ['corrupt', src, str(tmp_path / 'once'), '--resize', '36', '--crop', '32'] + PICK + QUIET
    assert main(argv) == 0
    capsys.readouterr()
    write = corrupt_tree.atomic_write
    count = {'n': 0}

    def killed_after_5(*args, **kwargs):
        count['n'] += 1
        if count['n'] > 5:
            raise KeyboardInterrupt
        return write(*args, **kwargs)
    monkeypatch.setattr(corrupt_tree, 'atomic_write', killed_after_5)
    resumed = str(tmp_path / 'twice')
    argv[2] = resumed
    line = one_error_line(capsys, 130, argv)
    assert line.startswith('timm-rspc corrupt: interrupted: 5 of 24 files written') and 'same command again' in line
    assert len(tree(resumed)) == 5 + 1  # complete files only, and the manifest
    monkeypatch.setattr(corrupt_tree, 'atomic_write', write)
    assert main(argv) == 0
    assert '19 files written, 5 already there' in capsys.readouterr().out
    assert tree(resumed) == tree(str(tmp_path / 'once'))
    # more corruptions into the same tree: only the new files are written
    assert main(argv[:7] + ['--corruptions', 'brightness,fog', '--severities', '1,3'] + QUIET) == 0
    assert '8 files written, 8 already there' in capsys.readouterr().out
    manifest = json.loads(tree(resumed)['corrupt.json'])
    assert manifest['splits'] == ['brightness/1', 'brightness/3', 'contrast/1', 'contrast/3', 'fog/1', 'fog/3',
                                  'gaussian_noise/1', 'gaussian_noise/3']


def test_a_destination_with_other_content_is_never_overwritten(src, tmp_path, capsys):
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    line = one_error_line(capsys, 2, ['corrupt', src, str(other)] + PICK + QUIET)
    assert "holds files that 'timm-rspc corrupt' did not write" in line
    assert os.listdir(other) == ['notes.txt']
    made = str(tmp_path / 'made')
    assert main(['corrupt', src, made, '--corruptions', 'brightness', '--severities', '1'] + QUIET) == 0
    before = tree(made)
    line = one_error_line(capsys, 2, ['corrupt', src, made, '--corruption-seed', '1', '--corruptions', 'brightness',
                                      '--severities', '1'] + QUIET)
    assert 'holds another corrupted tree (seed 0 (now 1))' in line
    line = one_error_line(capsys, 2, ['corrupt', src, made, '--crop', '200', '--corruptions', 'brightness'] + QUIET)
    assert "crop 224 (now 200)" in line
    assert tree(made) == before
    line = one_error_line(capsys, 2, ['corrupt', src, os.path.join(src, 'c')] + PICK + QUIET)
    assert 'inside SRC' in line


@pytest.fixture
def broken(tmp_path):
    """Source folders with one mistake each."""
    loose = tmp_path / 'loose'
    save_gray(str(loose / 'a.JPEG'), 2)
    nested = tmp_path / 'nested'  # an ImageNet-C tree given as SRC
    save_gray(str(nested / 'fog' / '1' / WNIDS[2] / 'a.JPEG'), 2)
    truncated = tmp_path / 'truncated'
    write_wnid_folder(str(truncated), [(2, 2), (3, 3)])
    bad = truncated / WNIDS[3] / 'img_001.JPEG'
    bad.write_bytes(bad.read_bytes()[:200])
    return {'loose': str(loose), 'nested': str(nested), 'truncated': str(truncated), 'bad': str(bad)}


@pytest.mark.parametrize('case, extra, message', [
    ('missing', [], "folder '{missing}' does not exist"),
    ('loose', [], "holds images directly (a.JPEG, ...); timm-rspc corrupt SRC expects DIR/<class>/<image>"),
    ('nested', [], 'holds no images (it holds folders: is this an ImageNet-C tree?'),
    ('truncated', [], "cannot read image '{bad}'"),
    ('ok', ['--corruptions', 'brightness,sparkle'], "corruption 'sparkle' is not available; available: "
                                                     "gaussian_noise, shot_noise"),
    ('ok', ['--severities', '0,3'], "--severities takes ImageNet-C's levels 1..5 (e.g. 1,3,5), got 0"),
    ('ok', ['--severities', 'high'], "--severities takes ImageNet-C's levels 1..5 separated by commas"),
    ('ok', ['--corruptions', 'fog', '--extra'], 'not both'),
    ('ok', ['--crop', '300'], '--crop 300 is larger than --resize 256'),
])
def test_bad_input_is_one_line_and_nothing_is_written(src, broken, tmp_path, capsys, case, extra, message):
    source = {'missing': str(tmp_path / 'missing'), 'ok': src}.get(case, broken.get(case))
    dst = tmp_path / 'dst'
    line = one_error_line(capsys, 2, ['corrupt', source, str(dst)] + extra + QUIET)
    assert message.format(missing=tmp_path / 'missing', bad=broken['bad']) in line, line
    assert not dst.exists()


def test_a_corruption_not_yet_implemented_is_named_and_new_ones_appear(src, tmp_path, capsys, monkeypatch):
    from timm_rspc import corruptions
    from timm_rspc.bench.on_the_fly import default_corruptions
    # as glass_blur, motion_blur, snow before they landed; a copy, so the registry's own order stays as it is
    monkeypatch.setattr(corruptions, 'CORRUPTIONS', {k: v for k, v in corruptions.CORRUPTIONS.items() if k != 'fog'})
    line = one_error_line(capsys, 2, ['bench', '--model', MODEL, '--corrupt', src, '--corruptions', 'fog,contrast',
                                      '--output', str(tmp_path / 'x')] + QUIET)
    assert "corruption 'fog' is not available (an ImageNet-C corruption not yet implemented" in line
    assert 'available: gaussian_noise' in line and not (tmp_path / 'x').exists()
    assert 'fog' not in default_corruptions()
    monkeypatch.setitem(corruptions.CORRUPTIONS, 'snow', corruptions.CORRUPTIONS['brightness'])
    monkeypatch.setitem(corruptions.CORRUPTIONS, 'spatter', corruptions.CORRUPTIONS['contrast'])
    monkeypatch.setattr(corruptions, 'EXTRA', corruptions.EXTRA + ('spatter',))
    names = default_corruptions()
    assert 'spatter' not in names and names.index('snow') == names.index('frost') - 1  # ImageNet-C's order
    assert default_corruptions(extra=True)[-4:] == ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')


def test_bench_corrupt_command_line(src, tmp_path, capsys, monkeypatch):
    from timm_rspc.bench.evaluate import Evaluator
    out = str(tmp_path / 'run')
    argv = ['bench', '--model', MODEL, '--corrupt', src, '--output', out, '--no-plot'] + PICK + QUIET
    original = interrupt_after(monkeypatch, 'top1_correct_corrupted', 2)
    line = one_error_line(capsys, 130, argv)
    assert '2 of 6 splits finished' in line
    command = shlex.split(line.split('continue with: ')[1])
    assert '--corruptions' in command and command[command.index('--severities') + 1] == '1,3'
    monkeypatch.setattr(Evaluator, 'top1_correct_corrupted', original)
    assert main(command[1:]) == 0
    assert 'corrupt/contrast/3' in capsys.readouterr().out
    # mistakes: one line, exit 2, no run folder
    cases = [
        (['--corrupt', str(tmp_path / 'nope')], "--corrupt folder '"),
        (['--imagenet', src, '--severities', '2'], 'give --corrupt DIR'),
        (['--corrupt', src, '--reference-results', str(tmp_path / 'none.json')], 'does not exist'),
        (['--corrupt', src, '--reference-checkpoint', str(tmp_path / 'x.pth')], 'give --reference-model'),
        (['--corrupt', src, '--corruptions', 'contrast', '--reference-results', os.path.join(out, 'results.json'),
          '--severities', '5'], 'lacks contrast/5'),
    ]
    for extra, message in cases:
        line = one_error_line(capsys, 2, ['bench', '--model', MODEL, '--output', str(tmp_path / 'y')] + extra + QUIET)
        assert message in line, line
        assert not (tmp_path / 'y').exists()


def test_bench_corrupt_on_a_truncated_image_saves_no_split(broken, tmp_path, capsys):
    out = tmp_path / 'run'
    line = one_error_line(capsys, 2, ['bench', '--model', MODEL, '--corrupt', broken['truncated'], '--output',
                                      str(out)] + PICK + QUIET)
    assert f"cannot read image '{broken['bad']}'" in line and 'replace it with an intact copy' in line
    assert os.listdir(out / 'splits') == [] and not (out / 'results.json').exists()
