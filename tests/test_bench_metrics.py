"""Benchmark metrics against values computed by hand, and FP / T5D against a line-by-line port of the reference."""
import numpy as np
import pytest
import torch

from timm_rspc.bench.corruption_metrics import cifar_c_summary, imagenet_c_summary
from timm_rspc.bench.perturbation_metrics import flip_probability, top5_classes, top5_distance, video_stability
from timm_rspc.bench.reference import ALEXNET_IMAGENET_C_ERROR, IMAGENET_C_CORRUPTIONS


def test_alexnet_constants_are_the_published_table():
    assert len(IMAGENET_C_CORRUPTIONS) == 15
    assert ALEXNET_IMAGENET_C_ERROR['gaussian_noise'] == 0.886428
    assert ALEXNET_IMAGENET_C_ERROR['jpeg_compression'] == 0.606500
    # Per-severity table of the reference README: brightness 0.45140 0.48502 0.54048 0.62166 0.72440 -> its average.
    assert np.mean([0.45140, 0.48502, 0.54048, 0.62166, 0.72440]) == pytest.approx(
        ALEXNET_IMAGENET_C_ERROR['brightness'], abs=1e-6)


def test_imagenet_c_ce_mce_no_noise_relative_by_hand():
    # Every corruption: errors 0.1..0.5 over severities (mean 0.3); noise corruptions: 0.9 everywhere.
    errors = {c: [0.1, 0.2, 0.3, 0.4, 0.5] for c in IMAGENET_C_CORRUPTIONS}
    for c in ('gaussian_noise', 'shot_noise', 'impulse_noise'):
        errors[c] = [0.9] * 5
    out = imagenet_c_summary(errors, clean_error=0.2, extra_errors={'spatter': [0.0, 0.1, 0.2, 0.3, 0.4]})
    assert out['ce']['brightness'] == pytest.approx(100 * 0.3 / 0.564592)
    assert out['ce']['gaussian_noise'] == pytest.approx(100 * 0.9 / 0.886428)
    ce = {c: 100 * (0.9 if 'noise' in c else 0.3) / ALEXNET_IMAGENET_C_ERROR[c] for c in IMAGENET_C_CORRUPTIONS}
    assert out['mce'] == pytest.approx(sum(ce.values()) / 15)
    assert out['mce_no_noise'] == pytest.approx(sum(v for c, v in ce.items() if 'noise' not in c) / 12)
    # Relative CE of fog: (0.3 - 0.2) / (0.819324 - 0.43478)
    assert out['relative_ce']['fog'] == pytest.approx(100 * 0.1 / (0.819324 - 0.43478))
    assert out['error_per_severity']['fog'] == pytest.approx([10, 20, 30, 40, 50])
    assert out['extra_error'] == {'spatter': pytest.approx(20.0)}
    assert 'spatter' not in out['ce']


def test_imagenet_c_missing_corruption_is_named():
    errors = {c: [0.5] * 5 for c in IMAGENET_C_CORRUPTIONS if c != 'fog'}
    with pytest.raises(ValueError, match='missing: fog'):
        imagenet_c_summary(errors)


def test_cifar_c_summary_by_hand():
    acc = {'fog': [1.0, 0.8, 0.6, 0.4, 0.2], 'snow': [1.0, 1.0, 1.0, 1.0, 0.0]}
    out = cifar_c_summary(acc)
    assert out['top1'] == pytest.approx(100 * 7.0 / 10)
    assert out['top1_per_severity'] == pytest.approx([100, 90, 80, 70, 10])
    assert out['top1_per_corruption'] == {'fog': pytest.approx(60), 'snow': pytest.approx(80)}


# ---- ImageNet-P: a port of the reference's loops (numpy / scipy), used only as the test's oracle ----

def _reference_fp_t5d(logits_per_video, noise, difficulty):
    from scipy.stats import rankdata
    num_classes = logits_per_video[0].shape[1]
    cum = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (num_classes - 1 - 5)))
    step = 1 if noise else difficulty
    fp = t5d = 0.
    for video in logits_per_video:
        preds = video.argmax(1)
        ranks = [rankdata(-frame, method='ordinal').astype(np.int64) for frame in video]
        flips, dists = [], []
        for i in range(step):
            prev_pred, perm1 = preds[i], ranks[i]
            for pred, perm2 in zip(preds[i::step][1:], ranks[i::step][1:]):
                flips.append(int(prev_pred != pred))
                sigma = perm2[np.argsort(perm1)]
                dists.append(np.sum(np.abs(cum[:5] - cum[sigma - 1][:5])))
                if not noise:
                    prev_pred, perm1 = pred, perm2
        fp += np.mean(flips) / len(logits_per_video)
        t5d += np.mean(dists) / len(logits_per_video)
    return fp, t5d


@pytest.mark.parametrize('noise,difficulty', [(True, 1), (False, 1), (False, 2), (True, 3)])
def test_fp_t5d_match_reference_loops(noise, difficulty):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 7, 4, 6])
    # Few distinct logit values: ties in the ranking and many flips, so tie-breaking is exercised.
    logits = torch.randint(0, 4, (int(lengths.sum()), 12), generator=g).double()
    videos = [v.numpy() for v in torch.split(logits, lengths.tolist())]
    fp_ref, t5d_ref = _reference_fp_t5d(videos, noise, difficulty)
    top5 = top5_classes(logits)
    assert flip_probability(top5, lengths, noise, difficulty) == pytest.approx(fp_ref, abs=1e-12)
    assert top5_distance(top5, lengths, noise, difficulty) == pytest.approx(t5d_ref, abs=1e-12)


def test_fp_by_hand_both_ways():
    # One video, top-1 classes 0, 1, 1, 0: consecutive flips 1, 0, 1 -> 2/3; against the first: 1, 1, 0 -> 2/3.
    # Second video 2, 2, 3: consecutive 0, 1 -> 1/2; against the first 0, 1 -> 1/2.
    classes = torch.tensor([0, 1, 1, 0, 2, 2, 3])
    logits = torch.nn.functional.one_hot(classes, 10).double()
    top5 = top5_classes(logits)
    lengths = torch.tensor([4, 3])
    assert flip_probability(top5, lengths, noise=False) == pytest.approx((2 / 3 + 1 / 2) / 2)
    classes2 = torch.tensor([0, 1, 0, 1, 2, 2, 3])  # consecutive: 1,1,1 -> 1; first: 1,0,1 -> 2/3
    top5 = top5_classes(torch.nn.functional.one_hot(classes2, 10).double())
    assert flip_probability(top5, lengths, noise=False) == pytest.approx((1 + 1 / 2) / 2)
    assert flip_probability(top5, lengths, noise=True) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_t5d_by_hand():
    # Frame a ranks classes 0 > 1 > 2 > 3 > 4 > 5...; frame b swaps 0 and 1 and replaces 4 by 5:
    # positions in b of a's top-5 (0,1,2,3,4) are (1,0,2,3,>=5) -> |0-1|+|1-0|+0+0+|4-5| = 3.
    a = torch.arange(10, 0, -1).double()
    b = a.clone()
    b[0], b[1] = a[1], a[0]
    b[4], b[5] = a[5], a[4]
    top5 = top5_classes(torch.stack([a, b]))
    assert top5_distance(top5, torch.tensor([2]), noise=False) == 3.0
    flips, dist, pairs = video_stability(top5, torch.tensor([2]), noise=True)
    assert (flips.item(), dist.item(), pairs.item()) == (1.0, 3.0, 1.0)


def test_too_short_video_is_an_error():
    top5 = top5_classes(torch.randn(2, 10))
    with pytest.raises(ValueError, match='more than 2 frame'):
        flip_probability(top5, torch.tensor([2]), noise=False, difficulty=2)
