"""The RSPC method for any patch-based timm model (import explicitly: ``import timm_rspc.method``).

Pieces, each in its own module: the settings with their defaults, ranges and flags (`settings`), the patch corruption
model and noise blend (`corruption`), gradient reversal (`gradient_reversal`), block discovery and the paired forward
that measures alignment (`capture`), the alignment loss (`alignment`), the corruption model's optimiser
(`corruption_optimizer`), both sized and configured for one model (`adversary`), the timm training task (`task`), a
Mixup-like hook for custom loops (`hook`) and the command-line flags with the task factory for timm's train.py
(`args`).
"""
from .adversary import create_adversary, resolve_mean_std
from .alignment import mean_over_blocks, paired_mse
from .args import add_rspc_args, create_rspc_task
from .capture import PairedBlockDistance, find_blocks, find_patch_grid, parse_block_spec, select_blocks
from .corruption import (
    AdversarialPatchCorruption, CorruptedBatch, PatchCorruptionModel, blend_noise, draw_noise,
    normalized_pixel_range, patch_mask_to_pixels, top_rho_straight_through,
)
from .corruption_optimizer import CorruptionOptimizer
from .gradient_reversal import reverse_gradient
from .hook import RSPCHook
from .settings import CLIP_MODES, NOISE_MODES, RSPCSettings
from .task import PlainClassificationTask, RSPCTask, RSPCTrainableModule

__all__ = [
    'RSPCSettings', 'add_rspc_args', 'create_rspc_task', 'RSPCTask', 'RSPCTrainableModule',
    'PlainClassificationTask', 'RSPCHook', 'PatchCorruptionModel', 'AdversarialPatchCorruption', 'CorruptedBatch',
    'CorruptionOptimizer', 'create_adversary', 'resolve_mean_std', 'PairedBlockDistance', 'find_blocks',
    'select_blocks', 'parse_block_spec', 'find_patch_grid', 'top_rho_straight_through', 'patch_mask_to_pixels',
    'normalized_pixel_range', 'draw_noise', 'blend_noise', 'NOISE_MODES', 'CLIP_MODES', 'reverse_gradient',
    'paired_mse', 'mean_over_blocks',
]
