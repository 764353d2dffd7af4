"""``bench --corrupt DIR``: any image folder under ImageNet-C's corruptions generated on the fly. The corrupted pixels
are the same at any batch size and world size, a killed run resumes to the same numbers, and CE / mCE against a
reference model (in the run, or from an earlier run's results) equal the errors of separate runs, by formula."""
import datetime
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from timm.models import register_model

from bench_fixtures import WNIDS, MeanPixelClassifier, gray, interrupt_after, timm_checkpoint, write_wnid_folder
from timm_rspc.bench import run_benchmark
from timm_rspc.bench.evaluate import Evaluator
from timm_rspc.bench.on_the_fly import OnTheFlyCorruption, image_seed

MODEL, CAPTURE, CENTRE = 'bench_test_mean_pixel', 'bench_test_capture', 'bench_test_centre_pixel'
QUIET = dict(workers=0, progress=False, plot=False, verbose=False)
# a random corruption with per-image draws, one with a random field per image, one deterministic
CORRUPTIONS = dict(corruptions=('gaussian_noise', 'fog', 'zoom_blur'), severities=(2, 5))
CAPTURED = []  # (B, 3, H, W) inputs the capture model saw, in order


class CaptureClassifier(MeanPixelClassifier):
    def forward(self, x):
        CAPTURED.append(x.detach().clone())
        return super().forward(x)


class CentrePixelClassifier(MeanPixelClassifier):
    """Classifies by the mean of the central 8 x 8 pixels, 2.5 grey levels too bright: near a class boundary, so it
    makes other mistakes than the whole image's mean."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return super().forward(x[..., h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4] + 2.5 / 255)


@register_model
def bench_test_capture(pretrained=False, num_classes=1000, **kwargs):
    return CaptureClassifier(num_classes)


@register_model
def bench_test_centre_pixel(pretrained=False, num_classes=1000, **kwargs):
    return CentrePixelClassifier(num_classes)


def write_textured(root, labels, size=(40, 36), seed=0):
    """Images of label k: gray(k) with +-30 texture, not square (the eval transform resizes and crops them)."""
    rng = np.random.default_rng(seed)
    for i, k in enumerate(labels):
        path = os.path.join(root, WNIDS[k], f'img_{i:03d}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        texture = rng.integers(-30, 31, (size[1], size[0], 3))
        Image.fromarray(np.clip(gray(k) + texture, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('corrupt') / 'photos')
    write_textured(root, [2, 3, 3, 4, 5, 5, 6])  # 7 images: not a multiple of 2 or 3
    return root


def _run(folder, output, **options):
    kwargs = {k: options.pop(k) for k in ('batch_size', 'resume') if k in options}
    return run_benchmark(options.pop('model', MODEL), str(output), corrupt=folder,
                         corrupt_options={**CORRUPTIONS, **options}, **kwargs, **QUIET)


def _captured():
    """What the model saw in the splits (the run's first forward is `check_input_size`'s blank image)."""
    assert CAPTURED[0].shape[0] == 1 and not CAPTURED[0].any()
    images = torch.cat(CAPTURED[1:])
    CAPTURED.clear()
    return images


def test_same_pixels_and_numbers_at_any_batch_size(folder, tmp_path):
    CAPTURED.clear()
    two = _run(folder, tmp_path / 'b2', model=CAPTURE, batch_size=2)
    pixels_two = _captured()
    three = _run(folder, tmp_path / 'b3', model=CAPTURE, batch_size=3)
    pixels_three = _captured()
    assert pixels_two.shape == (6 * 7, 3, 32, 32)  # 3 corruptions x 2 severities x 7 images
    assert torch.equal(pixels_two, pixels_three)
    assert two['splits'] == three['splits'] and two['summary'] == three['summary']
    # What the model saw is the clean image through its eval transform (resize 36 -> 32, center crop), corrupted
    # with the image's own generator and truncated to 8 bits: recomputed here one image at a time.
    from timm.data import create_transform, resolve_data_config
    from timm_rspc.bench.on_the_fly import read_image_folder
    model = CaptureClassifier()
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False, use_prefetcher=True)
    paths = [p for p, _ in read_image_folder(folder).samples]
    clean = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths]).float() / 255
    assert list(two['splits'])[:3] == ['corrupt/gaussian_noise/2', 'corrupt/gaussian_noise/5', 'corrupt/zoom_blur/2']
    fog_5 = list(two['splits']).index('corrupt/fog/5') * 7  # ImageNet-C's order: noise, blur, weather
    for i in (0, 4, 6):
        alone = OnTheFlyCorruption('fog', 5, 0, 85)(clean[i:i + 1], [i]).float() / 255  # mean 0, std 1
        assert torch.equal(pixels_two[fog_5 + i], alone[0])
    assert not torch.equal(pixels_two[fog_5], pixels_two[fog_5 + 1])
    # The seed of an image depends on every part of (seed, corruption, severity, index).
    seeds = {image_seed(s, c, v, i) for s in (0, 1) for c in ('fog', 'snow') for v in (1, 2) for i in (0, 1)}
    assert len(seeds) == 16


def test_resume_after_a_kill_gives_the_same_numbers(folder, tmp_path, monkeypatch):
    options = dict(reference_model=CENTRE)
    full = _run(folder, tmp_path / 'full', **options)
    original = interrupt_after(monkeypatch, 'top1_correct_corrupted', 3)
    with pytest.raises(KeyboardInterrupt) as e:
        _run(folder, tmp_path / 'killed', **options)
    assert (e.value.finished, e.value.total) == (3, 6)
    assert len(os.listdir(tmp_path / 'killed' / 'splits')) == 3
    monkeypatch.setattr(Evaluator, 'top1_correct_corrupted', original)
    with pytest.raises(ValueError, match='settings differ.*corrupt'):
        _run(folder, tmp_path / 'killed', resume=True, **{**options, 'seed': 1})
    resumed = _run(folder, tmp_path / 'killed', resume=True, **options)
    for key in ('results', 'summary', 'splits', 'settings'):
        assert resumed[key] == full[key]


def _errors(out, key='correct'):
    return {k.split('/', 1)[1]: 1 - r[key] / r['total'] for k, r in out['splits'].items()}


def test_ce_against_a_reference_model_and_its_results(folder, tmp_path):
    own = _run(folder, tmp_path / 'own')  # errors only
    assert 'ce' not in own['summary']['corrupt'] and 'mce' not in own['summary']['corrupt']
    assert 'AlexNet' in own['summary']['corrupt']['note'] and '--reference-model' in own['summary']['corrupt']['note']
    alone = _run(folder, tmp_path / 'reference', model=CENTRE)
    both = _run(folder, tmp_path / 'both', reference_model=CENTRE)
    # the reference in the run saw the same corrupted images as its own run
    assert _errors(both, 'reference_correct') == _errors(alone) and _errors(both) == _errors(own)
    mine, theirs = _errors(own), _errors(alone)
    assert len(set(theirs.values())) > 2 and 0 < min(theirs.values())  # a test with different, non-zero errors
    ce = {c: 100 * (mine[f'{c}/2'] + mine[f'{c}/5']) / (theirs[f'{c}/2'] + theirs[f'{c}/5'])
          for c in CORRUPTIONS['corruptions']}
    summary = both['summary']['corrupt']
    assert summary['ce'] == pytest.approx(ce, rel=1e-12)
    assert summary['mce'] == pytest.approx(np.mean(list(ce.values())), rel=1e-12)
    assert summary['mce_no_noise'] == pytest.approx((ce['fog'] + ce['zoom_blur']) / 2, rel=1e-12)
    assert summary['error']['fog'] == pytest.approx(100 * (mine['fog/2'] + mine['fog/5']) / 2)
    assert summary['error_per_severity']['fog'][1] == pytest.approx(100 * mine['fog/2'])
    assert summary['error_per_severity']['fog'][0] is None  # severity 1 not evaluated
    assert summary['reference']['model'] == CENTRE and 'not to AlexNet' in summary['note']
    # the reference's earlier results give the same CE / mCE
    results = str(tmp_path / 'reference' / 'results.json')
    again = _run(folder, tmp_path / 'from-file', reference_results=results)['summary']['corrupt']
    for key in ('ce', 'mce', 'mce_no_noise', 'error'):
        assert again[key] == summary[key]
    assert again['reference']['from'] == 'results'
    # a fixed reference error of 1 (a model that always picks the farthest class) makes CE the model's error
    path = str(tmp_path / 'inverted.pth.tar')
    timm_checkpoint(path, {'scale': torch.tensor(-1.)})
    inverted = _run(folder, tmp_path / 'inv', reference_model=MODEL, reference_checkpoint=path)['summary']['corrupt']
    assert inverted['ce'] == pytest.approx(inverted['error'])


def test_a_reference_without_errors_gives_no_ce():
    from timm_rspc.bench.corruption_metrics import relative_corruption_errors
    out = relative_corruption_errors({'fog': [0.5, 0.25], 'gaussian_noise': [1.0, 0.5]},
                                     {'fog': [0.0, 0.0], 'gaussian_noise': [0.5, 0.25]})
    assert out == {'ce': {'fog': None, 'gaussian_noise': 200.0}, 'undefined_ce': ['fog']}
    out = relative_corruption_errors({'fog': [0.5, 0.25], 'gaussian_noise': [1.0, 0.5]},
                                     {'fog': [1.0, 0.5], 'gaussian_noise': [0.5, 0.25]})
    assert (out['mce'], out['mce_no_noise']) == (125.0, 50.0)


def test_reference_results_of_another_data_set_or_corruption_set_are_refused(folder, tmp_path):
    reference = _run(folder, tmp_path / 'ref', model=CENTRE)
    results = str(tmp_path / 'ref' / 'results.json')
    other = str(tmp_path / 'other')
    write_textured(other, [2, 3, 3, 4, 5, 5, 7])
    cases = [
        (dict(corruptions=('gaussian_noise', 'contrast')), "another corruption set: it lacks contrast/2, contrast/5"),
        (dict(severities=(1, 2)), 'lacks gaussian_noise/1'),
        (dict(seed=3), 'corruption-seed 0, this run with 3'),
        (dict(jpeg_quality=0), 'corrupt-jpeg-quality 85, this run with 0: other images'),
        (dict(jpeg_quality=101), r'--corrupt-jpeg-quality must be 1..100 \(ImageNet-C: 85\) or 0'),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            _run(folder, tmp_path / 'x', reference_results=results, **options)
    with pytest.raises(ValueError, match='results of another data set'):
        _run(other, tmp_path / 'x', reference_results=results)
    write_wnid_folder(str(tmp_path / 'val'), [(2, 2)])
    run_benchmark(MODEL, str(tmp_path / 'clean'), imagenet=str(tmp_path / 'val'), **QUIET)
    with pytest.raises(ValueError, match="not the results of a 'timm-rspc bench --corrupt' run"):
        _run(folder, tmp_path / 'x', reference_results=str(tmp_path / 'clean' / 'results.json'))
    assert not (tmp_path / 'x').exists()
    assert reference['summary']['corrupt']['images'] == 7


def test_any_image_folder_is_labelled_by_sorted_folder_order(tmp_path):
    from bench_fixtures import save_gray
    pets = tmp_path / 'pets'
    for k, name in enumerate(('cat', 'dog', 'emu')):  # class k looks like gray(k)
        save_gray(str(pets / name / 'a.png'), k)
    for num_classes in (3, 1000):
        out = run_benchmark(MODEL, str(tmp_path / f'c{num_classes}'), model_kwargs={'num_classes': num_classes},
                            corrupt=str(pets), corrupt_options=dict(corruptions=('contrast',), severities=(1,)),
                            **QUIET)
        assert out['summary']['corrupt']['labels'] == 'folder order'
        assert out['splits'] == {'corrupt/contrast/1': {'correct': 3, 'total': 3}}  # contrast keeps uniform grays
    with pytest.raises(ValueError, match="has 3 class folders but the model has 2 classes"):
        run_benchmark(MODEL, str(tmp_path / 'c2'), model_kwargs={'num_classes': 2}, corrupt=str(pets), **QUIET)
    assert not (tmp_path / 'c2').exists()


WORLD_SIZE = 2


def _ddp_worker(rank, folder, root):
    dist.init_process_group('gloo', init_method=f'file://{root}/init', rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=120))   # a stuck rank fails the test, never hangs it
    try:
        CAPTURED.clear()
        _run(folder, os.path.join(root, 'two'), model=CAPTURE, batch_size=2, reference_model=CENTRE)
        torch.save(_captured(), os.path.join(root, f'pixels-{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_processes_see_the_same_corrupted_images(folder, tmp_path):
    root = str(tmp_path)
    CAPTURED.clear()
    one = _run(folder, tmp_path / 'one', model=CAPTURE, batch_size=3, reference_model=CENTRE)
    pixels = _captured().view(6, 7, 3, 32, 32)  # split, image
    # Rank 1 is spawned: a fork of this process (its OpenMP pool and locks already used by earlier tests) can hang
    # in its first parallel torch op.
    other = mp.get_context('spawn').Process(target=_ddp_worker, args=(1, folder, root))
    other.start()
    try:
        _ddp_worker(0, folder, root)
        other.join(timeout=120)
    finally:
        if other.is_alive():
            other.kill()
    assert other.exitcode == 0
    with open(tmp_path / 'two' / 'results.json') as f:
        two = json.load(f)
    assert two['run']['world_size'] == 2
    assert two['splits'] == json.loads(json.dumps(one['splits']))
    assert two['summary'] == json.loads(json.dumps(one['summary']))
    for rank in range(WORLD_SIZE):  # rank r evaluates images r, r + 2, ...
        mine = torch.load(tmp_path / f'pixels-{rank}.pt')
        assert torch.equal(mine.view(6, -1, 3, 32, 32), pixels[:, rank::WORLD_SIZE])
