"""The benchmarks' fixed facts: which corruptions and perturbations count, and AlexNet's errors that normalise them.

Sources (public, checked by hand):

* ImageNet-C corruptions, their noise / blur / weather / digital grouping and the 4 held-out extra corruptions:
  Hendrycks & Dietterich, ICLR 2019, and the dataset release (hendrycks/robustness, README).
* AlexNet's ImageNet-C top-1 errors, averaged over the 5 severities: the "AlexNet ImageNet-C Error" table of the
  hendrycks/robustness README (e.g. commit ac836a51, 2020-02-27; the table was later replaced by a spreadsheet link),
  the same values as ``ALEXNET_ERR`` in google-research/augmix ``imagenet.py``.
* AlexNet's clean top-1 error: the reference evaluation (hendrycks/robustness ``ImageNet-C/test.py``) uses torchvision's
  AlexNet weights, whose documented ImageNet-1k top-1 is 56.522% (``torchvision.models.AlexNet_Weights``), i.e. an
  error of 43.478%; the paper's table rounds it to 43.5.
* ImageNet-P's 10 test perturbations: the paper and ``ImageNet-P/test.py`` (spatter, speckle noise, Gaussian blur and
  shear are validation perturbations, README: "The spatter perturbation sequence is a validation sequence").
  AlexNet's per-perturbation flip probabilities are in no public code or file; they are taken from the user.
"""
from typing import Dict, Tuple

IMAGENET_C_CORRUPTIONS: Tuple[str, ...] = (
    'gaussian_noise', 'shot_noise', 'impulse_noise',
    'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'frost', 'fog', 'brightness',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression',
)
# "mCE w/o noise" (Rusak et al., ECCV 2020): the noise category is left out, the other 12 corruptions are averaged.
IMAGENET_C_NOISE: Tuple[str, ...] = ('gaussian_noise', 'shot_noise', 'impulse_noise')
IMAGENET_C_EXTRA: Tuple[str, ...] = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
IMAGENET_C_SEVERITIES: Tuple[int, ...] = (1, 2, 3, 4, 5)

# AlexNet's top-1 error on each ImageNet-C corruption, mean over the 5 severities (fraction, not percent).
ALEXNET_IMAGENET_C_ERROR: Dict[str, float] = {
    'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640,
    'defocus_blur': 0.819880, 'glass_blur': 0.826268, 'motion_blur': 0.785948, 'zoom_blur': 0.798360,
    'snow': 0.866816, 'frost': 0.826572, 'fog': 0.819324, 'brightness': 0.564592,
    'contrast': 0.853204, 'elastic_transform': 0.646056, 'pixelate': 0.717840, 'jpeg_compression': 0.606500,
}
ALEXNET_CLEAN_ERROR = 1.0 - 0.56522

IMAGENET_P_PERTURBATIONS: Tuple[str, ...] = (
    'gaussian_noise', 'shot_noise', 'motion_blur', 'zoom_blur', 'snow',
    'brightness', 'translate', 'rotate', 'tilt', 'scale',
)
# The noise sequences are independent draws around a clean first frame, not a temporal sequence.
IMAGENET_P_NOISE: Tuple[str, ...] = ('gaussian_noise', 'shot_noise')

CIFAR_C_CORRUPTIONS = IMAGENET_C_CORRUPTIONS
