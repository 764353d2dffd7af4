"""Evaluation throughput (images/s) of the bench's ImageNet loop vs a timm validate.py-style loop, side by side.

Both evaluate the same generated ImageNet-style folder (JPEGs of mixed sizes in WordNet-id folders) with the same
model, batch size and workers. The validate-style loop is timm's own pieces as validate.py uses them:
``create_dataset`` + ``create_loader`` (prefetcher on), ``model(input)`` and ``accuracy(...)`` with a host read of
top-1 per batch. The bench loop is ``timm_rspc.bench.run_benchmark(..., imagenet=folder)`` end to end (it also lists
the folder, writes its run folder and results). Rounds alternate so that machine load hits both alike.

    python benchmarks/bench_eval_throughput.py                    # test_vit, 4096 images, batch 64, 2 workers
    python benchmarks/bench_eval_throughput.py --model resnet18 --images 2048 --workers 4 --device cuda
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from timm_rspc.bench import run_benchmark
from timm_rspc.bench.datasets import imagenet_synsets


def make_folder(root: str, images: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    wnids = sorted(imagenet_synsets(), key=imagenet_synsets().get)[:classes]
    for i in range(images):
        folder = os.path.join(root, wnids[i % classes])
        os.makedirs(folder, exist_ok=True)
        height, width = rng.integers(240, 400, size=2)
        pixels = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(
            os.path.join(folder, f'img_{i:05d}.JPEG'), quality=90)


def validate_style(args, folder: str) -> float:
    """timm validate.py's evaluation path; returns top-1 (the number it would print)."""
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.utils import AverageMeter, accuracy
    device = torch.device(args.device)
    model = timm.create_model(args.model).to(device).eval()
    if device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    config = resolve_data_config(model=model)
    dataset = create_dataset('', root=folder, split='')
    loader = create_loader(dataset, input_size=config['input_size'], batch_size=args.batch_size, use_prefetcher=True,
                           interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                           num_workers=args.workers, crop_pct=config['crop_pct'], crop_mode=config['crop_mode'],
                           pin_memory=device.type == 'cuda', device=device)
    top1 = AverageMeter()
    with torch.inference_mode():
        for inputs, target in loader:
            if device.type == 'cuda':
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            output = model(inputs)
            acc1, _ = accuracy(output, target, topk=(1, 5))
            top1.update(acc1.item(), inputs.size(0))
    return top1.avg


def bench_loop(args, folder: str, output: str) -> float:
    out = run_benchmark(args.model, output, imagenet=folder, batch_size=args.batch_size, workers=args.workers,
                        device=args.device, progress=False, plot=False, verbose=False)
    return out['summary']['imagenet']['top1']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='test_vit')
    parser.add_argument('--images', type=int, default=4096)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, 'val')
        make_folder(folder, args.images)
        times = {'validate.py-style': [], 'timm-rspc bench': []}
        tops = {}
        for r in range(args.rounds):
            for name in (('validate.py-style', 'timm-rspc bench') if r % 2 == 0 else
                         ('timm-rspc bench', 'validate.py-style')):
                torch.manual_seed(0)  # same random weights for both
                start = time.perf_counter()
                if name == 'validate.py-style':
                    tops[name] = validate_style(args, folder)
                else:
                    tops[name] = bench_loop(args, folder, os.path.join(tmp, f'run{r}'))
                times[name].append(time.perf_counter() - start)
    rates = {name: args.images / statistics.median(t) for name, t in times.items()}
    print(f'{args.model}, {args.images} images, batch {args.batch_size}, {args.workers} workers, {args.device}, '
          f'median of {args.rounds} alternating rounds (model build and folder listing included in both):')
    for name, rate in rates.items():
        print(f'  {name:<18} {rate:8.1f} images/s   top-1 {tops[name]:.3f}')
    print(f'  ratio bench / validate-style: {rates["timm-rspc bench"] / rates["validate.py-style"]:.2f}x')


if __name__ == '__main__':
    main()
