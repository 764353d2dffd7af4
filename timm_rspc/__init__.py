"""timm-rspc: RSPC (Reducing Sensitivity to Patch Corruptions, CVPR 2023) for timm.

``import timm_rspc`` registers the RVT and FAN model families (and their RSPC pretrained tags) in timm's registry.
Nothing heavy is imported here: the training task, benchmarks, hub tools and Triton kernels live in submodules.
"""
__version__ = '0.1.0.dev0'

from . import models  # noqa: F401  (registers the models with timm)
