"""Quickstart: RSPC-RVT through timm's own ``create_model(..., pretrained=True)``, offline.

timm downloads a pretrained file once into ``<torch hub dir>/checkpoints/<release filename>`` and reads it from
there afterwards. To run without network, this example writes a *stand-in* for the release file
``rspc_rvt_tiny.pth.tar`` into a temporary hub dir: a timm training checkpoint (``state_dict``, ``state_dict_ema``,
``args``, ...) of ``rvt_tiny_plus`` with RANDOM weights. The model then loads it exactly as it loads the real file,
so the top-5 printed below are meaningless. Pass ``--download`` to use the real release (needs network once).

    python examples/quickstart.py [--download]
"""
import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image

import timm
import timm_rspc  # noqa: F401  (registers the RVT / FAN models and the RSPC tags with timm)
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm_rspc.cli.models import list_package_models


def write_stand_in_release_file(hub_dir: str) -> str:
    """A random-weight rvt_tiny_plus saved as the authors' release container, under the release filename."""
    torch.manual_seed(0)
    weights = timm.create_model('rvt_tiny_plus').state_dict()
    ema_weights = timm.create_model('rvt_tiny_plus').state_dict()
    checkpoint = {
        'state_dict': weights, 'state_dict_ema': ema_weights, 'arch': 'rvt_tiny_plus', 'epoch': 299,
        'args': argparse.Namespace(model='rvt_tiny_plus', note='random stand-in weights'),
    }
    path = os.path.join(hub_dir, 'checkpoints', 'rspc_rvt_tiny.pth.tar')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(checkpoint, path)
    return path


def synthetic_image(size: int = 320) -> Image.Image:
    """A colourful test pattern (no image files or downloads needed)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * x) ** 2, np.cos(5 * y) ** 2, (x * y) ** 0.5], axis=-1)
    rgb[(x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.05] = (0.9, 0.6, 0.1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def classify(model_name: str) -> None:
    model = timm.create_model(model_name, pretrained=True).eval()
    cfg = model.pretrained_cfg
    print(f"Loaded '{model_name}' = {cfg['architecture']}.{cfg['tag']} from {cfg['url']}")
    print(f"  {sum(p.numel() for p in model.parameters()):,} parameters; paper results: {'; '.join(cfg['notes'])}")

    data_config = resolve_data_config(model=model)
    transform = create_transform(**data_config)  # eval transform: resize, center crop 0.875, normalise
    x = transform(synthetic_image()).unsqueeze(0)
    with torch.inference_mode():
        probs = model(x).softmax(dim=-1)[0]
    info = ImageNetInfo()
    print('  top-5 on a synthetic image:')
    for p, i in zip(*probs.topk(5)):
        print(f'    {p.item():6.2%}  {info.index_to_description(i.item())}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--download', action='store_true', help='use the real release file (network needed once)')
    args = parser.parse_args()

    if args.download:
        classify('rvt_ti_rspc')
    else:
        with tempfile.TemporaryDirectory() as hub_dir:
            previous = torch.hub.get_dir()
            torch.hub.set_dir(hub_dir)
            try:
                path = write_stand_in_release_file(hub_dir)
                print(f'Wrote a stand-in release file with RANDOM weights: {path}')
                print('  (predictions below are meaningless; run with --download for the real weights)')
                classify('rvt_ti_rspc')
            finally:
                torch.hub.set_dir(previous)

    print('\nModels registered by timm_rspc:')
    print('  ' + ', '.join(row['name'] for row in list_package_models()))
    print('Pretrained tags (timm.create_model(name, pretrained=True)):')
    for row in list_package_models(pretrained=True):
        print(f"  {row['name']:<32} {row['url']}")


if __name__ == '__main__':
    main()
