"""``--corruption-constants imagenet|cifar|tinyimagenet`` in ``bench --corrupt`` and ``timm-rspc corrupt``: the
constants reach the corruption, are recorded (settings.json, the summary, corrupt.json), a run or tree with other
constants is never continued or compared with, and a size far from the constants' own is said in one line."""
import json

import numpy as np
import pytest

from bench_fixtures import write_wnid_folder
from test_bench_corrupt import CAPTURED, MODEL, _captured, _run, write_textured   # noqa: F401 (registers models)
from timm_rspc.bench import run_benchmark
from timm_rspc.bench.on_the_fly import CorruptOptions, constants_size_warning
from timm_rspc.cli import main

QUIET = ['-j', '0', '--no-progress']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('constants') / 'photos')
    write_textured(root, [2, 3, 4, 5])
    return root


def test_the_bench_corrupts_with_the_chosen_constants_and_records_them(folder, tmp_path, capsys):
    """contrast at severity 1 pulls each channel towards its mean by 0.4 (ImageNet-C) or 0.75 (CIFAR-10-C): the
    model sees images whose spread around the mean is 0.75 / 0.4 times larger with the CIFAR constants."""
    spreads = {}
    for constants in ('imagenet', 'cifar'):
        CAPTURED.clear()
        out = _run(folder, tmp_path / constants, model='bench_test_capture', corruptions=('contrast',),
                   severities=(1,), jpeg_quality=0, constants=constants)
        pixels = _captured().double() * 255
        spreads[constants] = float((pixels - pixels.mean(dim=(2, 3), keepdim=True)).std())
        assert out['summary']['corrupt']['constants'] == constants
        settings = json.loads((tmp_path / constants / 'settings.json').read_text())
        assert settings['corrupt']['constants'] == constants
    assert spreads['cifar'] / spreads['imagenet'] == pytest.approx(0.75 / 0.4, rel=0.05)
    # the 32 px images are far from ImageNet-C's 224 px, not from CIFAR's 32: one warning line, only for imagenet
    for constants in ('imagenet', 'cifar'):
        run_benchmark(MODEL, str(tmp_path / f'loud-{constants}'), corrupt=folder, workers=0, progress=False,
                      plot=False, corrupt_options=dict(corruptions=('contrast',), severities=(1,), constants=constants))
    warnings = [line for line in capsys.readouterr().out.splitlines() if 'warning' in line]
    assert len(warnings) == 1 and 'made for 224 px images' in warnings[0] and '32 px' in warnings[0]
    assert '--corruption-constants cifar is closer' in warnings[0]


def test_other_constants_are_not_resumed_or_compared_with(folder, tmp_path):
    pick = dict(corruptions=('contrast',), severities=(1,))
    _run(folder, tmp_path / 'ref', **pick)
    with pytest.raises(ValueError, match='--corruption-constants imagenet, this run with tinyimagenet: other '
                                         'corruptions; use the same constants'):
        _run(folder, tmp_path / 'x', reference_results=str(tmp_path / 'ref' / 'results.json'),
             constants='tinyimagenet', **pick)
    # a results.json from before the choice existed was made with ImageNet-C's constants
    results = json.loads((tmp_path / 'ref' / 'results.json').read_text())
    del results['settings']['corrupt']['constants']
    (tmp_path / 'old.json').write_text(json.dumps(results))
    _run(folder, tmp_path / 'y', reference_results=str(tmp_path / 'old.json'), **pick)
    # an interrupted run is continued only with the same settings (settings.json's corrupt block holds the constants)
    (tmp_path / 'ref' / 'results.json').unlink()
    with pytest.raises(ValueError, match=r'--resume: the settings differ .*\(corrupt\)'):
        _run(folder, tmp_path / 'ref', resume=True, constants='cifar', **pick)
    with pytest.raises(ValueError, match='--corruption-constants must be one of imagenet, cifar, tinyimagenet'):
        CorruptOptions(constants='cifar10').resolved()


def test_size_warning():
    assert constants_size_warning('imagenet', (224, 224)) is None
    assert constants_size_warning('imagenet', (3, 384, 384)) is None        # within a factor of 2
    assert constants_size_warning('tinyimagenet', (64, 64)) is None
    line = constants_size_warning('cifar', (224, 224))
    assert '\n' not in line and 'made for 32 px' in line and '--corruption-constants imagenet is closer' in line


def test_corrupt_command_records_the_constants_and_continues_only_the_same(tmp_path, capsys):
    src = str(tmp_path / 'val')
    write_wnid_folder(src, [(2, 2), (3, 3)])
    dst = str(tmp_path / 'val-c')
    argv = ['corrupt', src, dst, '--corruptions', 'contrast', '--severities', '1', '--resize', '36', '--crop', '32']
    assert main(argv + ['--corruption-constants', 'cifar'] + QUIET) == 0
    assert 'warning' not in capsys.readouterr().out
    manifest = json.loads((tmp_path / 'val-c' / 'corrupt.json').read_text())
    assert manifest['constants'] == 'cifar'
    with pytest.raises(SystemExit) as error:
        main(argv + QUIET)   # the default, imagenet, into the cifar tree
    assert error.value.code != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "constants 'cifar' (now 'imagenet')" in err[0], err
    # a tree written before the choice existed holds ImageNet-C's constants: continued by the default
    old = str(tmp_path / 'old-c')
    assert main(argv[:2] + [old] + argv[3:] + QUIET) == 0
    assert 'made for 224 px images' in capsys.readouterr().out   # 32 px crops with ImageNet-C's constants
    path = tmp_path / 'old-c' / 'corrupt.json'
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != 'constants'}))
    assert main(argv[:2] + [old] + argv[3:] + QUIET) == 0
    assert '0 files written, 2 already there' in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:
        main(argv + ['--corruption-constants', 'cifar10'] + QUIET)
    assert error.value.code == 2
    assert "invalid choice: 'cifar10'" in capsys.readouterr().err


def test_files_differ_between_constants(tmp_path):
    """The same source and seed with CIFAR's constants gives other files than with ImageNet-C's (contrast 0.75 vs
    0.4 at severity 1; JPEG quality 100, whose rounding barely touches the texture)."""
    from PIL import Image
    src = str(tmp_path / 'val')
    write_textured(src, [2, 3], size=(32, 32))
    images = {}
    for constants in ('imagenet', 'cifar'):
        dst = tmp_path / constants
        assert main(['corrupt', src, str(dst), '--corruptions', 'contrast', '--severities', '1', '--resize', '32',
                     '--crop', '32', '--quality', '100', '--corruption-constants', constants] + QUIET) == 0
        images[constants] = np.stack([np.asarray(Image.open(p)).astype(float) for p in sorted(dst.rglob('*.JPEG'))])
    spread = {k: (v - v.mean(axis=(1, 2), keepdims=True)).std() for k, v in images.items()}
    assert spread['cifar'] / spread['imagenet'] == pytest.approx(0.75 / 0.4, rel=0.1)


def test_frost_too_small_for_the_images_is_refused_before_anything_is_written(tmp_path, capsys):
    """The 32 px constants shrink frost's photographs to 63 x 105 px and up: 64 px crops do not fit, said before the
    run starts rather than when frost's turn comes."""
    from timm_rspc.bench.on_the_fly import check_frost_fits
    from timm_rspc.corruptions.reference_data import frost_images
    try:
        frost_images()
    except RuntimeError as error:
        pytest.skip(f'frost needs the ImageNet-C photographs: {str(error).splitlines()[0]}')
    check_frost_fits(('frost',), 'cifar', (62, 104))
    check_frost_fits(('fog',), 'cifar', (500, 500))     # no frost: nothing to check
    with pytest.raises(ValueError, match='at most 62 x 104 px with the cifar corruption constants; these images are '
                                         '64 x 64'):
        check_frost_fits(('fog', 'frost'), 'cifar', (3, 64, 64))
    src = str(tmp_path / 'val')
    write_wnid_folder(src, [(2, 2)])
    dst = tmp_path / 'val-c'
    with pytest.raises(SystemExit):
        main(['corrupt', src, str(dst), '--corruptions', 'contrast,frost', '--resize', '64', '--crop', '64',
              '--corruption-constants', 'cifar'] + QUIET)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and 'at most 62 x 104 px' in err[0], err
    assert not dst.exists()
