"""The RSPC method for any patch-based timm model (import explicitly: ``import timm_rspc.method``).

Pieces, each in its own module: the settings with their defaults, ranges and flags (`settings`), the patch corruption
model and noise blend (`corruption`), gradient reversal (`gradient_reversal`), block discovery and the paired forward
that measures alignment (`capture`), the alignment loss (`alignment`), the corruption model's optimiser
(`corruption_optimizer`), both sized and configured for one model (`adversary`), the timm training task (`task`), a
Mixup-like hook for custom loops (`hook`) and the command-line flags with the task factory for timm's train.py
(`args`).
"""
import importlib

# Imported on first use (PEP 562), so each piece needs only the timm it uses: the hook, C and the block capture run
# on every timm the models run on; the task and its factory (`task`, `args`) need timm.task (timm 1.0.23+) and say so
# in one line when used with an older timm.
_EXPORTS = {
    'adversary': ('create_adversary', 'resolve_mean_std'),
    'alignment': ('mean_over_blocks', 'paired_mse'),
    'args': ('add_rspc_args', 'create_rspc_task'),
    'capture': ('PairedBlockDistance', 'find_blocks', 'find_patch_grid', 'parse_block_spec', 'select_blocks'),
    'corruption': ('AdversarialPatchCorruption', 'CorruptedBatch', 'PatchCorruptionModel', 'blend_noise', 'draw_noise',
                   'normalized_pixel_range', 'patch_mask_to_pixels', 'top_rho_straight_through'),
    'corruption_optimizer': ('CorruptionOptimizer',),
    'gradient_reversal': ('reverse_gradient',),
    'hook': ('RSPCHook',),
    'settings': ('CLIP_MODES', 'NOISE_MODES', 'RSPCSettings'),
    'task': ('PlainClassificationTask', 'RSPCTask', 'RSPCTrainableModule'),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    'RSPCSettings', 'add_rspc_args', 'create_rspc_task', 'RSPCTask', 'RSPCTrainableModule',
    'PlainClassificationTask', 'RSPCHook', 'PatchCorruptionModel', 'AdversarialPatchCorruption', 'CorruptedBatch',
    'CorruptionOptimizer', 'create_adversary', 'resolve_mean_std', 'PairedBlockDistance', 'find_blocks',
    'select_blocks', 'parse_block_spec', 'find_patch_grid', 'top_rho_straight_through', 'patch_mask_to_pixels',
    'normalized_pixel_range', 'draw_noise', 'blend_noise', 'NOISE_MODES', 'CLIP_MODES', 'reverse_gradient',
    'paired_mse', 'mean_over_blocks',
]
