"""ImageNet-C and CIFAR-C summaries from per-corruption, per-severity top-1 errors, as the literature defines them.

All inputs are fractions (errors or accuracies in [0, 1]); all outputs are percent, the unit of the papers' tables.
Corruption Error (Hendrycks & Dietterich, ICLR 2019): CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}; mCE is the mean
CE over the 15 corruptions; relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean).
"""
from typing import Dict, Optional, Sequence

import torch

from .reference import (
    ALEXNET_CLEAN_ERROR, ALEXNET_IMAGENET_C_ERROR, IMAGENET_C_CORRUPTIONS, IMAGENET_C_NOISE,
)

__all__ = ['imagenet_c_summary', 'cifar_c_summary', 'relative_corruption_errors']


def _as_table(values: Dict[str, Sequence[float]], names: Sequence[str]) -> torch.Tensor:
    """(corruptions, severities) float64 table in ``names`` order."""
    return torch.tensor([list(values[n]) for n in names], dtype=torch.float64)


def imagenet_c_summary(
        errors: Dict[str, Sequence[float]],
        clean_error: Optional[float] = None,
        extra_errors: Optional[Dict[str, Sequence[float]]] = None,
) -> Dict[str, object]:
    """CE per corruption, mCE, mCE w/o noise and (with ``clean_error``) relative mCE, from top-1 errors.

    Args:
        errors: corruption -> its top-1 error at each of the 5 severities, for all 15 ImageNet-C corruptions.
        clean_error: top-1 error on the clean ImageNet validation set (for the relative mCE), if measured.
        extra_errors: the held-out corruptions, reported as plain mean errors (they have no AlexNet normaliser in
            the mCE and are never part of it).
    """
    missing = [c for c in IMAGENET_C_CORRUPTIONS if c not in errors]
    if missing:
        raise ValueError(f'mCE needs all 15 ImageNet-C corruptions; missing: {", ".join(missing)}.')
    names = IMAGENET_C_CORRUPTIONS
    table = _as_table(errors, names)  # (15, 5)
    alexnet = torch.tensor([ALEXNET_IMAGENET_C_ERROR[n] for n in names], dtype=torch.float64)
    mean_error = table.mean(dim=1)
    ce = 100 * mean_error / alexnet
    with_noise = torch.tensor([n not in IMAGENET_C_NOISE for n in names])
    summary: Dict[str, object] = {
        'mce': ce.mean().item(),
        'mce_no_noise': ce[with_noise].mean().item(),
        'mean_error': 100 * mean_error.mean().item(),
        'ce': dict(zip(names, ce.tolist())),
        'error': dict(zip(names, (100 * mean_error).tolist())),
        'error_per_severity': {n: (100 * row).tolist() for n, row in zip(names, table)},
    }
    if clean_error is not None:
        relative_ce = 100 * (mean_error - clean_error) / (alexnet - ALEXNET_CLEAN_ERROR)
        summary['relative_mce'] = relative_ce.mean().item()
        summary['relative_ce'] = dict(zip(names, relative_ce.tolist()))
    if extra_errors:
        extra_names = sorted(extra_errors)
        extra = _as_table(extra_errors, extra_names)
        summary['extra_error'] = dict(zip(extra_names, (100 * extra.mean(dim=1)).tolist()))
        summary['extra_error_per_severity'] = {n: (100 * row).tolist() for n, row in zip(extra_names, extra)}
    return summary


def cifar_c_summary(accuracies: Dict[str, Sequence[float]]) -> Dict[str, object]:
    """CIFAR-10/100-C: mean top-1 accuracy over the corruptions given (all severities), per severity, per corruption.

    The literature's CIFAR-C number (AugMix, RVT, RSPC) is the mean over the 15 corruptions and 5 severities.
    """
    names = sorted(accuracies)
    table = _as_table(accuracies, names)  # (corruptions, 5)
    return {
        'top1': 100 * table.mean().item(),
        'top1_per_severity': (100 * table.mean(dim=0)).tolist(),
        'top1_per_corruption': dict(zip(names, (100 * table.mean(dim=1)).tolist())),
        'top1_per_corruption_severity': {n: (100 * row).tolist() for n, row in zip(names, table)},
    }


def relative_corruption_errors(
        errors: Dict[str, Sequence[float]],
        reference_errors: Dict[str, Sequence[float]],
        noise: Sequence[str] = IMAGENET_C_NOISE,
) -> Dict[str, object]:
    """CE per corruption and mCE against a reference model instead of AlexNet (any corruption set, any severities).

    CE_c = 100 * sum_s E_{s,c} / sum_s E^ref_{s,c} over the severities given (the same for both), mCE the mean over
    the corruptions, mCE w/o noise the mean over those not in ``noise``. A corruption the reference never gets
    wrong has no CE (None), and then there is no mCE. Inputs are fractions per severity, outputs percent.
    """
    names = list(errors)
    missing = [n for n in names if n not in reference_errors or len(reference_errors[n]) != len(errors[n])]
    if missing:
        raise ValueError(f'the reference has no errors for {", ".join(missing)} at the same severities.')
    table, reference = _as_table(errors, names), _as_table(reference_errors, names)
    sums, reference_sums = table.sum(dim=1), reference.sum(dim=1)
    ce = {n: (100 * s / r).item() if r > 0 else None for n, s, r in zip(names, sums, reference_sums)}
    undefined = [n for n, v in ce.items() if v is None]
    no_noise = [ce[n] for n in names if n not in noise]
    summary: Dict[str, object] = {'ce': ce, 'undefined_ce': undefined}
    if not undefined:
        summary['mce'] = sum(ce.values()) / len(ce)
        if no_noise:
            summary['mce_no_noise'] = sum(no_noise) / len(no_noise)
    return summary
