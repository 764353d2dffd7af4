"""Where a corruption's random draws come from: one ``torch.Generator`` for the batch, or one per image.

With one generator the batch's draws come from one stream, so an image's corruption depends on its batch-mates and
its position. With a sequence of generators, one per image (``per_image_generators``), image i draws only from
generator i, in the same order as a batch of one would: the corruption of an image is then the same in any batch,
at any batch size and on any rank, which is what a resumable, distributed corrupted evaluation needs. Only the draws
loop over the images (one small ``torch.rand`` per image and draw); the corruption itself runs on the whole batch.
"""
from typing import Callable, Optional, Sequence, Union

import torch

__all__ = ['Generators', 'rand', 'randn', 'randint', 'poisson', 'per_image_generators']

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


def _per_image(generator: Generators, batch: int) -> Optional[Sequence[torch.Generator]]:
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if len(generator) != batch:
        raise ValueError(f'Got {len(generator)} generators for a batch of {batch} images: pass one per image, '
                         f'or a single torch.Generator for the whole batch.')
    return generator


def _draw(sample: Callable, shape, generator: Generators, **kwargs) -> torch.Tensor:
    shape = tuple(shape)
    generators = _per_image(generator, shape[0])
    if generators is None:
        return sample(shape, generator=generator, **kwargs)
    return torch.stack([sample(shape[1:], generator=g, **kwargs) for g in generators])


def rand(shape, generator: Generators = None, **kwargs) -> torch.Tensor:
    """``torch.rand(shape)``, the first dimension being the batch."""
    return _draw(torch.rand, shape, generator, **kwargs)


def randn(shape, generator: Generators = None, **kwargs) -> torch.Tensor:
    """``torch.randn(shape)``, the first dimension being the batch."""
    return _draw(torch.randn, shape, generator, **kwargs)


def randint(high: int, shape, generator: Generators = None, **kwargs) -> torch.Tensor:
    """``torch.randint(high, shape)``, the first dimension being the batch."""
    return _draw(lambda size, **kw: torch.randint(high, size, **kw), shape, generator, **kwargs)


def poisson(rates: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """``torch.poisson(rates)``, the first dimension of ``rates`` being the batch."""
    generators = _per_image(generator, rates.shape[0])
    if generators is None:
        return torch.poisson(rates, generator=generator)
    return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, generators)])


def per_image_generators(seeds: Sequence[int], device=None) -> Sequence[torch.Generator]:
    """One generator per image, seeded with that image's seed (e.g. derived from the corruption, the severity and
    the image's index in the data set), on ``device``."""
    return [torch.Generator(device=device or 'cpu').manual_seed(int(seed)) for seed in seeds]
