"""Data for the analyses: an image folder in timm's layout, read by timm's dataset and transform, as pixels in [0, 1].

The models normalise for themselves (`PixelModel`), so the loader applies the first model's evaluation transform
(resize, centre crop) with mean 0 and std 1. A ``num_images`` subset is a seeded random sample of the split (image
folders are sorted by class, so the first images would all be of one class), kept in data-set order.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ['pixel_data_config', 'image_folder_loader']


def pixel_data_config(model: nn.Module, crop_pct: Optional[float] = None,
                      img_size: Union[None, int, Sequence[int]] = None) -> Dict:
    """timm's evaluation data config of ``model`` with the normalisation removed (mean 0, std 1), at ``img_size`` or
    the input size the model's patch grid was built for (a model created with ``img_size=...`` keeps its cfg's size
    otherwise)."""
    from timm.data import resolve_data_config
    from timm_rspc.method import find_patch_grid
    overrides = {} if crop_pct is None else {'crop_pct': crop_pct}
    config = resolve_data_config(overrides, model=model)
    channels = config['input_size'][0]
    img_size, _ = find_patch_grid(model, img_size)
    return dict(config, input_size=(channels, *img_size), mean=(0.,) * channels, std=(1.,) * channels)


def image_folder_loader(
        root: str, split: str, data_config: Dict, batch_size: int = 64, num_images: Optional[int] = None,
        seed: int = 0, workers: int = 2,
):
    """A timm loader over ``root``/``split`` yielding ``(pixels in [0, 1], targets)`` in a fixed order."""
    import os
    from timm.data import create_dataset, create_transform
    if not os.path.isdir(root):
        raise NotADirectoryError(f"data folder '{root}' does not exist; pass --data-dir with an image folder in "
                                 f"timm's layout (<root>/<split>/<class>/<image>).")
    dataset = create_dataset('', root=root, split=split, is_training=False)
    if len(dataset) == 0:
        raise ValueError(f"no images found under '{root}' (split '{split}').")
    dataset.transform = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode'))
    if num_images is not None and num_images < len(dataset):
        if num_images < 1:
            raise ValueError(f'--num-images must be at least 1, got {num_images}.')
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
        dataset = torch.utils.data.Subset(dataset, chosen.sort().values.tolist())
    # timm's create_loader would set the transform on a Subset wrapper, where the dataset never sees it.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
