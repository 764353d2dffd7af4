"""``timm-rspc bench`` end to end on generated data sets in the real layouts, every figure against a hand value."""
import json
import os

import numpy as np
import pytest

from bench_fixtures import WNIDS, gray, interrupt_after, save_gray, write_video, write_wnid_folder
from timm_rspc.bench import compare, run_benchmark
from timm_rspc.bench.evaluate import Evaluator
from timm_rspc.bench.reference import (
    ALEXNET_CLEAN_ERROR, ALEXNET_IMAGENET_C_ERROR, IMAGENET_C_CORRUPTIONS, IMAGENET_P_PERTURBATIONS,
)

MODEL = 'bench_test_mean_pixel'
FAST = dict(workers=0, progress=False, plot=False, verbose=False)


def wrong_images(corruption_index: int, severity: int) -> int:
    """ImageNet-C design: of 2 images per split, this many are misclassified."""
    if corruption_index < 3:  # the noise corruptions: always wrong
        return 2
    return (corruption_index + severity) % 3


def _imagenet_c_images(ci, s):
    wrong = wrong_images(ci, s)
    return [(2, 2 if i >= wrong else 7) for i in range(2)]  # label 2; a wrong one looks like class 7


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench_data')
    paths = {}
    # ImageNet val: 4 images, 1 wrong -> top-1 75 %, clean error 0.25.
    paths['imagenet'] = str(root / 'val')
    write_wnid_folder(paths['imagenet'], [(2, 2), (3, 3), (4, 4), (4, 5)])
    # ImageNet-C, official layout, plus the extra corruption 'spatter' (error 0.5 everywhere).
    paths['imagenet_c'] = str(root / 'imagenet-c')
    flat_labels = []
    for ci, corruption in enumerate(IMAGENET_C_CORRUPTIONS + ('spatter',)):
        for s in range(1, 6):
            images = _imagenet_c_images(ci, s) if corruption != 'spatter' else [(2, 2), (2, 7)]
            write_wnid_folder(os.path.join(paths['imagenet_c'], corruption, str(s)), images)
            for i, (label, predicted) in enumerate(images):  # the same images in the flat layout
                name = f'{corruption}_{s}_{i}.JPEG'
                save_gray(str(root / 'imagenet-c-flat' / corruption / str(s) / name), predicted)
                flat_labels.append(f'{name} {label}')
    paths['flat'] = str(root / 'imagenet-c-flat')
    paths['flat_labels'] = str(root / 'flat_labels.txt')
    (root / 'flat_labels.txt').write_text('\n'.join(flat_labels) + '\n')
    # ImageNet-A: its first classes are ImageNet classes 6, 11, 13. Among the 200 kept logits, an image that looks
    # like class 7 (m = 7.2) is closest to 6, one like 10 (m = 10.2) to 11: both right, although the full argmax
    # (7, 10) is wrong; the third (looks like 6, label 11) is wrong.
    paths['imagenet_a'] = str(root / 'imagenet-a')
    write_wnid_folder(paths['imagenet_a'], [(6, 7), (11, 10), (11, 6)])
    # ImageNet-V2: folders named by class index; '10' sorts before '2' lexicographically.
    paths['imagenet_v2'] = str(root / 'imagenet-v2')
    for i, k in enumerate((2, 10, 10, 3)):
        save_gray(os.path.join(paths['imagenet_v2'], str(k), f'{i}.jpeg'), k if i < 3 else 4)
    # ImageNet-P: 2 videos per perturbation. Video 1 predicts 5, 6, 5, 7; video 2 predicts 9 throughout.
    paths['imagenet_p'] = str(root / 'imagenet-p')
    for p in IMAGENET_P_PERTURBATIONS:
        write_video(os.path.join(paths['imagenet_p'], p, WNIDS[5], 'a.mp4'), [5, 6, 5, 7])
        write_video(os.path.join(paths['imagenet_p'], p, WNIDS[9], 'b.mp4'), [9, 9, 9, 9])
    # CIFAR-10-C: 10 images per corruption (2 per severity), all labelled 1, some made to look like class 3.
    paths['cifar10_c'] = str(root / 'cifar10-c')
    os.makedirs(paths['cifar10_c'])
    labels = np.ones(10, dtype=np.int64)
    np.save(os.path.join(paths['cifar10_c'], 'labels.npy'), labels)
    for ci, corruption in enumerate(IMAGENET_C_CORRUPTIONS):
        predicted = np.ones(10, dtype=np.int64)
        # severity s holds images 2s-2, 2s-1; the second one is wrong if s <= ci % 3
        predicted[1::2] = np.where(np.arange(5) < ci % 3, 3, 1)
        images = np.repeat(np.repeat(np.repeat(gray(predicted)[:, None, None, None], 32, 1), 32, 2), 3, 3)
        np.save(os.path.join(paths['cifar10_c'], f'{corruption}.npy'), images.astype(np.uint8))
    return paths


def _run(tmp_path, name, **kwargs):
    return run_benchmark(MODEL, str(tmp_path / name), **FAST, **kwargs)


def test_imagenet_and_imagenet_c_by_hand(data, tmp_path):
    out = _run(tmp_path, 'c', imagenet=data['imagenet'], imagenet_c=data['imagenet_c'])
    s = out['summary']
    assert s['imagenet']['top1'] == 75.0
    errors = {c: [wrong_images(ci, sv) / 2 for sv in range(1, 6)] for ci, c in enumerate(IMAGENET_C_CORRUPTIONS)}
    ce = {c: 100 * np.mean(e) / ALEXNET_IMAGENET_C_ERROR[c] for c, e in errors.items()}
    rel = {c: 100 * (np.mean(e) - 0.25) / (ALEXNET_IMAGENET_C_ERROR[c] - ALEXNET_CLEAN_ERROR)
           for c, e in errors.items()}
    c = s['imagenet_c']
    # fog is corruption 9: (9 + s) % 3 of its 2 images wrong at severity s
    assert c['ce']['fog'] == pytest.approx(100 * (0.5 + 1 + 0 + 0.5 + 1) / 5 / 0.819324)
    assert c['mce'] == pytest.approx(np.mean(list(ce.values())))
    assert c['mce_no_noise'] == pytest.approx(np.mean([v for k, v in ce.items() if 'noise' not in k]))
    assert c['relative_mce'] == pytest.approx(np.mean(list(rel.values())))
    assert c['extra_error'] == {'spatter': pytest.approx(50.0)}
    assert c['transform'] == 'authors'
    assert out['results'] == {'imagenet_top1': 75.0, 'imagenet_c_mce': pytest.approx(c['mce']),
                              'imagenet_c_mce_no_noise': pytest.approx(c['mce_no_noise'])}
    assert out['splits']['imagenet_c/fog/2'] == {'correct': 0, 'total': 2}
    folder = tmp_path / 'c'
    assert json.loads((folder / 'results.json').read_text())['summary'] == json.loads(json.dumps(s))
    assert 'imagenet_c,ce.fog,' in (folder / 'results.csv').read_text()
    from timm_rspc.bench.report import write_plot
    assert write_plot(str(tmp_path / 'plot.png'), s, MODEL) and (tmp_path / 'plot.png').stat().st_size > 10000
    # The model card reads the file as it is.
    from timm_rspc.hub.model_card import read_results
    assert read_results(str(folder / 'results.json'))['results']['imagenet_top1'] == 75.0


def test_flat_imagenet_c_layout_gives_the_same_numbers(data, tmp_path):
    official = _run(tmp_path, 'a', imagenet_c=data['imagenet_c'])
    flat = _run(tmp_path, 'b', imagenet_c=data['flat'], imagenet_c_labels=data['flat_labels'],
                imagenet_c_transform='model')
    assert flat['summary']['imagenet_c']['mce'] == official['summary']['imagenet_c']['mce']
    assert flat['summary']['imagenet_c']['transform'] == 'model'
    with pytest.raises(ValueError, match='--imagenet-c-labels'):
        _run(tmp_path, 'c', imagenet_c=data['flat'])


def test_missing_corruption_is_named_or_partial(data, tmp_path):
    import shutil
    partial = tmp_path / 'partial'
    shutil.copytree(data['imagenet_c'], partial)
    shutil.rmtree(partial / 'fog' / '3')
    with pytest.raises(FileNotFoundError, match=r"fog/3' is missing"):
        _run(tmp_path, 'x', imagenet_c=str(partial))
    assert not (tmp_path / 'x').exists()
    out = _run(tmp_path, 'y', imagenet_c=str(partial), allow_partial=True)
    c = out['summary']['imagenet_c']
    assert c['partial'] and c['missing'] == ['fog'] and 'mce' not in c
    assert out['results'] == {}  # no mCE to export
    shutil.copytree(os.path.join(data['imagenet_c'], 'fog', '3'), partial / 'fog' / '3')
    os.remove(partial / 'snow' / '2' / WNIDS[2] / 'img_000.JPEG')  # an incompletely extracted split
    with pytest.raises(ValueError, match=r'hold 2 images, but snow/2 \(1\) do not'):
        _run(tmp_path, 'z', imagenet_c=str(partial))


def test_imagenet_a_restricts_logits_and_v2_maps_folders_numerically(data, tmp_path):
    out = _run(tmp_path, 'a', imagenet_a=data['imagenet_a'], imagenet_v2=data['imagenet_v2'])
    assert out['summary']['imagenet_a']['top1'] == pytest.approx(100 * 2 / 3)
    assert out['summary']['imagenet_v2']['top1'] == 75.0  # folders 2, 10, 10 right, the image in '3' wrong


def test_imagenet_p_fp_and_t5d_by_hand(data, tmp_path):
    ref = tmp_path / 'alexnet_p.json'
    ref.write_text(json.dumps({'flip_probability': {p: 0.5 for p in IMAGENET_P_PERTURBATIONS},
                               'top5_distance': {p: 10.0 for p in IMAGENET_P_PERTURBATIONS}}))
    out = _run(tmp_path, 'p', imagenet_p=data['imagenet_p'], imagenet_p_reference=str(ref))
    p = out['summary']['imagenet_p']
    # Top-5 of class k: [k, k+1, k-1, k+2, k-2]. T5D(5 -> 6) = 8, T5D(6 -> 5) = 9, T5D(5 -> 7) = 12 (by hand).
    # Noise: frames vs the first: flips 1, 0, 1; distances 8, 0, 12. Others: consecutive: flips 1, 1, 1; 8, 9, 12.
    # Video 2 never changes: 0. FP and T5D are per-video means, averaged over the 2 videos.
    assert p['flip_probability']['gaussian_noise'] == pytest.approx(100 * (2 / 3) / 2)
    assert p['top5_distance']['shot_noise'] == pytest.approx((20 / 3) / 2)
    assert p['flip_probability']['rotate'] == pytest.approx(100 * 1 / 2)
    assert p['top5_distance']['tilt'] == pytest.approx((29 / 3) / 2)
    assert p['mean_flip_probability'] == pytest.approx(100 * (2 * (1 / 3) + 8 * 0.5) / 10)
    assert p['mfr'] == pytest.approx(100 * (2 * (1 / 3) + 8 * 0.5) / 10 / 0.5)
    assert p['mt5d'] == pytest.approx(100 * (2 * (10 / 3) + 8 * (29 / 6)) / 10 / 10)
    assert out['results'] == {'imagenet_p_mfr': pytest.approx(p['mfr'])}
    unnormalised = _run(tmp_path, 'q', imagenet_p=data['imagenet_p'])
    assert not unnormalised['summary']['imagenet_p']['normalised'] and unnormalised['results'] == {}


def test_cifar_c_mean_and_per_severity_by_hand(data, tmp_path):
    out = run_benchmark(MODEL, str(tmp_path / 'c10'), model_kwargs={'num_classes': 10}, cifar10_c=data['cifar10_c'],
                        **FAST)
    c = out['summary']['cifar10_c']
    # Corruption i: at severity s the 2nd image is wrong if s <= i % 3 -> (i % 3) of 10 images wrong.
    wrong = [i % 3 for i in range(15)]
    assert c['top1'] == pytest.approx(100 * (1 - sum(wrong) / 150))
    per_severity = [100 * (1 - sum(w >= s for w in wrong) / 30) for s in range(1, 6)]
    assert c['top1_per_severity'] == pytest.approx(per_severity)
    assert out['results'] == {'cifar10_c_top1': pytest.approx(c['top1'])}
    with pytest.raises(ValueError, match='CIFAR-10-C needs a 10-class model'):
        _run(tmp_path, 'x', cifar10_c=data['cifar10_c'])


def test_resume_after_a_kill_gives_the_same_results(data, tmp_path, monkeypatch):
    kwargs = dict(imagenet=data['imagenet'], imagenet_c=data['imagenet_c'])
    full = _run(tmp_path, 'full', **kwargs)
    original = interrupt_after(monkeypatch, 'top1_correct', 7)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, 'killed', **kwargs)
    assert len(os.listdir(tmp_path / 'killed' / 'splits')) == 7 and not (tmp_path / 'killed' / 'results.json').exists()
    monkeypatch.setattr(Evaluator, 'top1_correct', original)
    with pytest.raises(FileExistsError, match='--resume'):
        _run(tmp_path, 'killed', **kwargs)
    resumed = _run(tmp_path, 'killed', resume=True, **kwargs)
    for key in ('results', 'summary', 'splits', 'settings'):
        assert resumed[key] == full[key]
    with pytest.raises(FileExistsError, match='finished'):
        _run(tmp_path, 'killed', **kwargs)
    # --resume of a finished run (a multi-model command resumed) reads its results and writes nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'killed').iterdir()}
    assert _run(tmp_path, 'killed', resume=True, **kwargs)['summary'] == json.loads(json.dumps(full['summary']))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'killed').iterdir()} == before


def test_bad_input_names_the_file_and_writes_no_result(data, tmp_path):
    import shutil
    broken = tmp_path / 'val'
    shutil.copytree(data['imagenet'], broken)
    bad = broken / WNIDS[3] / 'img_001.JPEG'
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=f"cannot read image '{bad}'"):
        run_benchmark(MODEL, str(tmp_path / 'out'), imagenet=str(broken), workers=1, progress=False, plot=False,
                      verbose=False)
    assert not (tmp_path / 'out' / 'results.json').exists() and os.listdir(tmp_path / 'out' / 'splits') == []
    video_root = tmp_path / 'p'
    shutil.copytree(data['imagenet_p'], video_root)
    bad_video = video_root / 'rotate' / WNIDS[5] / 'a.mp4'
    bad_video.write_bytes(b'not a video')
    with pytest.raises(ValueError, match=f"cannot decode video '{bad_video}'"):
        _run(tmp_path, 'outp', imagenet_p=str(video_root))
    with pytest.raises(FileNotFoundError, match='does-not-exist'):
        _run(tmp_path, 'x', imagenet_a=str(tmp_path / 'does-not-exist'))
    with pytest.raises(ValueError, match='ImageNet-V2 folders are named by class index'):
        _run(tmp_path, 'y', imagenet_v2=data['imagenet'])  # wnid folders where numbers belong


def test_cli_table_compare_and_errors(data, tmp_path, capsys):
    from timm_rspc.cli import main
    common = ['--imagenet', data['imagenet'], '--workers', '0', '--no-progress', '--no-plot']
    assert main(['bench', '--model', MODEL, MODEL, '--output', str(tmp_path / 'two')] + common) == 0
    out = capsys.readouterr().out
    assert 'IN-1k top-1 (up)' in out and '75.00 (+0.00)' in out
    first = tmp_path / 'two' / f'0-{MODEL}' / 'results.json'
    assert main(['bench', '--compare', str(first), str(first)]) == 0
    assert '75.00 (+0.00)' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(['bench', '--model', MODEL, '--output', str(tmp_path / 'two' / f'0-{MODEL}')] + common)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'finished benchmark' in err[0]
    assert 'IN-1k' in compare([str(first)])


def test_missing_video_extra_is_one_line_naming_it(data, tmp_path, capsys, monkeypatch):
    import sys
    from timm_rspc.cli import main
    monkeypatch.setitem(sys.modules, 'av', None)  # as if PyAV were not installed
    with pytest.raises(SystemExit) as e:
        main(['bench', '--model', MODEL, '--imagenet-p', data['imagenet_p'], '--output', str(tmp_path / 'p')])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "timm-rspc[video]" in err[0]
    assert not (tmp_path / 'p').exists()
