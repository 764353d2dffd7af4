"""The fixed random patch masks of the sensitivity analyses: which patches of each image get perturbed.

The paper perturbs a fixed random 10% of the patches of every image. "Fixed" matters for a paired comparison: image
``i`` has the same mask under every perturbation and for every model, so a difference between two models (or two
perturbations) is never a difference between masks. Masks are drawn once for the whole data set from one seed and
indexed by the image's position in the data, so they do not depend on the batch size either: `FixedPatchMasks`
draws them in chunks of 1024 images, each chunk from its own seed, so any range of images is available while
streaming without holding the masks of the whole data set.
"""
import hashlib
from typing import Tuple

import torch

__all__ = ['num_occluded', 'random_keep_masks', 'FixedPatchMasks']


def num_occluded(grid_size: Tuple[int, int], ratio: float) -> int:
    """Patches RSPC's corruption model occludes at ``ratio``: those below the ratio-quantile of N distinct scores."""
    return int(ratio * (grid_size[0] * grid_size[1] - 1)) + 1


def random_keep_masks(count: int, grid_size: Tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(count, N) patch masks, 1 = keep, with exactly ``num_occluded`` zeros per image at random places."""
    if not 0. < ratio < 1.:
        raise ValueError(f'The patch ratio must lie in (0, 1), got {ratio}.')
    num_patches = grid_size[0] * grid_size[1]
    order = torch.rand(count, num_patches, generator=generator).argsort(dim=1)
    keep = torch.ones(count, num_patches)
    keep.scatter_(1, order[:, :num_occluded(grid_size, ratio)], 0.)
    return keep


class FixedPatchMasks:
    """The keep masks of a data set: ``masks.rows(start, stop)`` are those of images ``start .. stop - 1``.

    Row ``i`` is a pure function of ``(grid_size, ratio, seed, i)``: the same whatever the batch size, the
    perturbation or the model.
    """
    chunk = 1024

    def __init__(self, grid_size: Tuple[int, int], ratio: float, seed: int):
        random_keep_masks(0, grid_size, ratio, torch.Generator())  # validates the ratio early
        self.grid_size, self.ratio, self.seed = tuple(grid_size), float(ratio), int(seed)
        self._cached = (None, None)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def _chunk(self, index: int) -> torch.Tensor:
        if self._cached[0] != index:
            digest = hashlib.sha256(f'masks/{self.seed}/{index}'.encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:6], 'little'))
            self._cached = (index, random_keep_masks(self.chunk, self.grid_size, self.ratio, generator))
        return self._cached[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, N) float masks, 1 = keep, 0 = perturb."""
        if not 0 <= start <= stop:
            raise ValueError(f'Invalid image range {start}..{stop}.')
        first, last = start // self.chunk, max(start, stop - 1) // self.chunk
        masks = torch.cat([self._chunk(c) for c in range(first, last + 1)])
        offset = first * self.chunk
        return masks[start - offset:stop - offset]
