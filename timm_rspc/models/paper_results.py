"""Published results of the released weights, keyed by timm ``arch.tag`` name.

Sources: the RSPC paper (Guo, Stutz, Schiele, CVPR 2023), Table of ImageNet comparisons, and the README of the
authors' release (CIFAR results). ImageNet-C and ImageNet-P are mean corruption / flip error (lower is better),
the others are top-1 accuracy in percent. Model cards, pretrained cfg notes and benchmark reports read this table.
"""
from typing import Dict, Tuple

RSPC_PAPER = 'Improving Robustness of Vision Transformers by Reducing Sensitivity to Patch Corruptions'
RSPC_CVF_URL = (
    'https://openaccess.thecvf.com/content/CVPR2023/papers/'
    'Guo_Improving_Robustness_of_Vision_Transformers_by_Reducing_Sensitivity_To_Patch_CVPR_2023_paper.pdf'
)
RSPC_CITATION = """@inproceedings{guo2023improving,
  title={Improving Robustness of Vision Transformers by Reducing Sensitivity to Patch Corruptions},
  author={Guo, Yong and Stutz, David and Schiele, Bernt},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  pages={4108--4118},
  year={2023}
}"""

# Metric name -> (human label, higher_is_better)
METRICS: Dict[str, Tuple[str, bool]] = {
    'imagenet_top1': ('ImageNet-1k top-1', True),
    'imagenet_a_top1': ('ImageNet-A top-1', True),
    'imagenet_c_mce': ('ImageNet-C mCE', False),
    'imagenet_c_mce_no_noise': ('ImageNet-C mCE w/o noise', False),
    'imagenet_p_mfr': ('ImageNet-P mFR', False),
    'cifar10_top1': ('CIFAR-10 top-1', True),
    'cifar10_c_top1': ('CIFAR-10-C top-1', True),
    'cifar100_top1': ('CIFAR-100 top-1', True),
    'cifar100_c_top1': ('CIFAR-100-C top-1', True),
}


def _imagenet(top1, in_a, in_c, in_c_no_noise, in_p):
    return {
        'imagenet_top1': top1, 'imagenet_a_top1': in_a, 'imagenet_c_mce': in_c,
        'imagenet_c_mce_no_noise': in_c_no_noise, 'imagenet_p_mfr': in_p,
    }


PAPER_RESULTS: Dict[str, Dict[str, float]] = {
    # RSPC weights (paper, ImageNet comparison table)
    'rvt_tiny_plus.rspc_in1k': _imagenet(79.5, 16.5, 55.7, 57.5, 38.0),
    'rvt_small_plus.rspc_in1k': _imagenet(82.2, 27.9, 48.4, 50.4, 34.3),
    'rvt_base_plus.rspc_in1k': _imagenet(82.8, 32.1, 45.7, 48.5, 31.0),
    'fan_tiny_8_p4_hybrid.rspc_in1k': _imagenet(80.3, 23.6, 57.2, 58.4, 37.3),
    'fan_small_12_p4_hybrid.rspc_in1k': _imagenet(83.6, 36.8, 47.5, 49.4, 33.5),
    'fan_base_16_p4_hybrid.rspc_in1k': _imagenet(84.2, 41.1, 44.5, 46.8, 30.0),
    # RSPC weights on CIFAR (authors' release README)
    'rvt_small_plus.rspc_cifar10': {'cifar10_top1': 97.73, 'cifar10_c_top1': 94.14},
    'rvt_small_plus.rspc_cifar100': {'cifar100_top1': 84.81, 'cifar100_c_top1': 74.94},
    'fan_small_12_p4_hybrid.rspc_cifar10': {'cifar10_top1': 98.06, 'cifar10_c_top1': 94.59},
    'fan_small_12_p4_hybrid.rspc_cifar100': {'cifar100_top1': 85.30, 'cifar100_c_top1': 75.72},
}

# Baselines the paper compares against (same table), by the architecture they belong to. FAN baselines are the
# `.in1k` tags of the FAN release; the RVT* baselines were not released with RSPC.
BASELINE_RESULTS: Dict[str, Dict[str, float]] = {
    'rvt_tiny_plus': _imagenet(79.2, 14.6, 57.0, 58.9, 39.1),
    'rvt_small_plus': _imagenet(81.9, 25.7, 49.4, 51.6, 35.2),
    'rvt_base_plus': _imagenet(82.6, 28.5, 46.8, 49.8, 31.9),
    'fan_tiny_8_p4_hybrid': _imagenet(80.1, 21.9, 58.3, 59.8, 38.3),
    'fan_small_12_p4_hybrid': _imagenet(83.5, 33.9, 48.5, 50.7, 34.5),
    'fan_base_16_p4_hybrid': _imagenet(83.9, 39.6, 46.1, 48.1, 31.3),
}


def paper_notes(name: str) -> Tuple[str, ...]:
    """Human-readable result lines for a pretrained cfg's ``notes`` (empty if nothing is published)."""
    results = PAPER_RESULTS.get(name, {})
    return tuple(f'{METRICS[k][0]}: {v}' for k, v in results.items())
