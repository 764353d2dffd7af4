"""A classifier seen in pixel space: the analyses perturb pixels in [0, 1], each model normalises for itself.

Perturbation budgets (PGD's epsilon, the corruptions' severities, uniform noise) are defined on pixels in [0, 1], as in
the literature. Keeping the data in pixel space and moving the normalisation into the model also lets two models with
different means and standard deviations see exactly the same perturbed images.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ['PixelModel']


class PixelModel(nn.Module):
    """``forward(pixels)`` = ``model((pixels - mean) / std)``; ``model`` is kept as is (its hooks, attention switch).

    Args:
        model: a timm classifier taking normalised images.
        mean, std: its input normalisation (default: from ``timm.data.resolve_data_config(model=model)``).
        img_size: the input size the analyses feed it, which sets their patch grid (default: the model's own, see
            `timm_rspc.method.find_patch_grid`; pass it for models built at another size than their pretrained cfg's
            that do not record it, e.g. a Hiera or a ConvNeXt).
    """

    def __init__(self, model: nn.Module, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 img_size: Union[None, int, Sequence[int]] = None):
        super().__init__()
        self.img_size = img_size
        if mean is None or std is None:
            from timm.data import resolve_data_config
            config = resolve_data_config({}, model=model)
            mean = config['mean'] if mean is None else mean
            std = config['std'] if std is None else std
        self.model = model
        param = next(model.parameters(), None)
        dd = dict(device=param.device if param is not None else None, dtype=torch.float32)
        self.register_buffer('mean', torch.as_tensor(mean, **dd).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.as_tensor(std, **dd).reshape(1, -1, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))
