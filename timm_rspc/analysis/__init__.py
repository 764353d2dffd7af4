"""The paper's two analyses for any patch-based timm model (import explicitly: ``import timm_rspc.analysis``).

- Sensitivity (`sensitivity`): top-1 accuracy and true-class confidence when a fixed random 10% of each image's
  patches is perturbed by patch-restricted PGD, common corruptions, uniform noise (RSPC's corruption) or the
  worst-case patches of a fitted corruption model.
- Attention stability (`attention`): per attention layer, how much the attention rows change between the clean and
  the patch-corrupted image.

Both take models wrapped as `PixelModel` (pixels in [0, 1] in, normalisation inside) and any iterable of
``(pixels, targets)`` batches, stream over it, and return plain dicts; `plots` turns them into matplotlib figures::

    from timm_rspc.analysis import PixelModel, PatchPGD, NoiseOcclusion, evaluate_sensitivity, sensitivity_figure
    models = {'baseline': PixelModel(base), 'RSPC': PixelModel(rspc)}
    result = evaluate_sensitivity(models, batches, [NoiseOcclusion(), PatchPGD(epsilon=4 / 255)])
    sensitivity_figure(result)
"""
from .attention import (
    AttentionStability, attention_change_sums, attention_extractor, evaluate_attention_stability,
    query_attention_maps, unfused_attention,
)
from .corruptions import CORRUPTION_CATEGORIES, CORRUPTIONS, corrupt
from .masks import FixedPatchMasks, num_occluded, random_keep_masks
from .perturbations import NoiseOcclusion, PatchCorruption, PatchPGD, WorstCasePatches, occlude_with_noise
from .pixel_model import PixelModel
from .plots import (
    PLOT_EXTRA_HINT, attention_grid_figure, attention_stability_figure, save_figure, sensitivity_figure,
)
from .sensitivity import evaluate_sensitivity, sensitivity_rows

__all__ = [
    'PixelModel', 'FixedPatchMasks', 'num_occluded', 'random_keep_masks', 'NoiseOcclusion', 'PatchPGD',
    'PatchCorruption', 'WorstCasePatches', 'occlude_with_noise', 'CORRUPTIONS', 'CORRUPTION_CATEGORIES', 'corrupt',
    'evaluate_sensitivity', 'sensitivity_rows', 'attention_change_sums', 'AttentionStability', 'unfused_attention',
    'attention_extractor', 'evaluate_attention_stability', 'query_attention_maps', 'PLOT_EXTRA_HINT',
    'sensitivity_figure', 'attention_stability_figure', 'attention_grid_figure', 'save_figure',
]
