"""ImageNet-P stability: flip probability (FP) and top-5 distance (T5D), computed as the reference code does.

The reference evaluation (hendrycks/robustness, ``ImageNet-P/test.py``, run at its default difficulty 1) compares, in
each video, every frame with the first one for the noise perturbations (independent noise draws around a clean
first frame) and every frame with the one ``difficulty`` frames before it for the others (a temporal sequence);
it averages the comparisons within each video, then over videos. T5D between a reference frame ``a`` and a frame
``b`` is ``sum_k |k - min(r_k, 5)|`` over a's top-5 classes (k = 0..4), where r_k is the 0-based rank in ``b`` of
a's k-th class; classes are ranked by logit, ties broken by class index (``scipy.stats.rankdata(..., 'ordinal')``).

Frames of all videos are given flat (concatenated video after video) with each video's frame count, so that every
figure is a handful of tensor operations, without a loop over videos or frames.
"""
from typing import Tuple

import torch

__all__ = ['top5_classes', 'video_stability', 'flip_probability', 'top5_distance']


def top5_classes(logits: torch.Tensor) -> torch.Tensor:
    """(frames, 5) class indices by decreasing logit, ties by class index (the reference's ordinal ranking)."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :5]


def _pairs(lengths: torch.Tensor, noise: bool, difficulty: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reference frame, compared frame, video) index of every comparison the reference code makes."""
    step = 1 if noise else difficulty
    if bool((lengths <= step).any()):
        raise ValueError(f'Every ImageNet-P video needs more than {step} frame(s) for a comparison; '
                         f'shortest has {int(lengths.min())}.')
    video = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    frame = torch.arange(len(video), device=lengths.device)
    position = frame - starts[video]
    compared = frame[position >= step]
    reference = starts[video[compared]] if noise else compared - step
    return reference, compared, video[compared]


def video_stability(
        top5: torch.Tensor, lengths: torch.Tensor, noise: bool, difficulty: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per video: number of top-1 flips, sum of top-5 distances and number of comparisons (float64 sums).

    Per-video sums add up exactly across processes that each evaluated whole videos.

    Args:
        top5: (frames, 5) from `top5_classes`, videos concatenated.
        lengths: (videos,) number of frames of each video.
        noise: a noise perturbation (every frame against the first) rather than a temporal sequence.
        difficulty: the reference's frame step for temporal sequences (1 in the published evaluation).
    """
    reference, compared, video = _pairs(lengths, noise, difficulty)
    a, b = top5[reference], top5[compared]
    flips = (a[:, 0] != b[:, 0]).double()
    match = a.unsqueeze(2) == b.unsqueeze(1)  # (pairs, k in a, position in b)
    rank_in_b = torch.where(match.any(dim=2), match.int().argmax(dim=2), 5)  # ranks past the top 5 all count as 5
    distance = (rank_in_b - torch.arange(5, device=top5.device)).abs().sum(dim=1).double()
    num_videos = len(lengths)
    sums = torch.zeros(3, num_videos, dtype=torch.float64, device=top5.device)
    sums[0].index_add_(0, video, flips)
    sums[1].index_add_(0, video, distance)
    sums[2].index_add_(0, video, torch.ones_like(flips))
    return sums[0], sums[1], sums[2]


def flip_probability(top5: torch.Tensor, lengths: torch.Tensor, noise: bool, difficulty: int = 1) -> float:
    """FP: the mean over videos of the fraction of comparisons whose top-1 class differs (a fraction)."""
    flips, _, pairs = video_stability(top5, lengths, noise, difficulty)
    return (flips / pairs).mean().item()


def top5_distance(top5: torch.Tensor, lengths: torch.Tensor, noise: bool, difficulty: int = 1) -> float:
    """T5D: the mean over videos of the mean top-5 distance of its comparisons."""
    _, distance, pairs = video_stability(top5, lengths, noise, difficulty)
    return (distance / pairs).mean().item()
