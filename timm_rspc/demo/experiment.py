"""The demo experiment: the same small ViT trained with and without RSPC, then run through the paper's analyses.

Both runs go through the package's trainer (:func:`timm_rspc.train.train`) with identical data, seed, schedule and
number of epochs; only ``--rspc`` differs. Evaluation uses the final weights (not the best epoch: the validation
split is also the test split here, so picking by it would flatter both models): the sensitivity analysis (clean,
random-patch noise, worst-case patches, patch PGD, patch-restricted common corruptions) and the attention stability
analysis of `timm_rspc.analysis`, on the same fixed random patch masks for both models.
"""
import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional

import torch
from timm.data import resolve_data_config

from timm_rspc.analysis import PixelModel, num_occluded
from timm_rspc.method import RSPCSettings

from .shapes import CLASS_NAMES, write_image_folder


@dataclass
class DemoConfig:
    """Every setting of the demo. ``FULL`` is the README run; ``QUICK`` a smoke test of the same code path."""
    # Data: generated shapes, 10 classes.
    img_size: int = 32
    train_per_class: int = 400
    val_per_class: int = 100
    data_seed: int = 0
    # Model: timm's ViT at a small size (ViT-tiny-like: narrower and shallower, a 4x4 grid of 8 px patches).
    model: str = 'vit_tiny_patch16_224'
    patch_size: int = 8
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    # Training, identical for both runs.
    epochs: int = 25
    batch_size: int = 32
    opt: str = 'adamw'
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    seed: int = 42
    workers: int = 1
    # RSPC: authors' occlusion ratio; lambda and the corruption model's lr scaled up for a run of minutes
    # (the authors' 0.005 and 1e-4 are for 300 ImageNet epochs of a larger model).
    rspc_ratio: float = 0.1
    rspc_lambda: float = 1.0
    rspc_lr: float = 0.05
    # Evaluation: one fixed random patch mask per validation image, shared by every perturbation and both models.
    occlusion_ratio: float = 0.1
    attacker_steps: int = 60
    attacker_lr: float = 0.01
    attacker_fit_images: int = 1000
    pgd_epsilon: float = 8 / 255
    pgd_step_size: float = 2 / 255
    pgd_steps: int = 10
    corruption_severity: int = 3
    grid_images: int = 4
    eval_batch_size: int = 250
    eval_seed: int = 1234
    log_interval: int = 20

    def train_argv(self, data_dir: str, output_dir: str, rspc: bool) -> List[str]:
        argv = [
            '--data-dir', data_dir, '--model', self.model, '--num-classes', str(len(CLASS_NAMES)),
            '--model-kwargs', f'img_size={self.img_size}', f'patch_size={self.patch_size}',
            f'embed_dim={self.embed_dim}', f'depth={self.depth}', f'num_heads={self.num_heads}',
            '--crop-pct', '1.0', '--no-aug',  # the generator already varies position, scale, colour, rotation
            '--epochs', str(self.epochs), '-b', str(self.batch_size), '--opt', self.opt, '--lr', str(self.lr),
            '--weight-decay', str(self.weight_decay), '--warmup-epochs', str(self.warmup_epochs),
            '--warmup-lr', str(self.lr / 10), '--seed', str(self.seed), '-j', str(self.workers),
            '--log-interval', str(self.log_interval), '--checkpoint-hist', '1',
            '--output', output_dir, '--experiment', 'rspc' if rspc else 'baseline',
        ]
        if rspc:
            argv += ['--rspc', '--rspc-ratio', str(self.rspc_ratio), '--rspc-lambda', str(self.rspc_lambda),
                     '--rspc-lr', str(self.rspc_lr)]
        return argv


FULL = DemoConfig()
QUICK = replace(
    FULL, train_per_class=12, val_per_class=6, embed_dim=48, depth=2, num_heads=2, epochs=1, batch_size=24,
    warmup_epochs=0, workers=0, attacker_steps=3, attacker_fit_images=48, pgd_steps=2, grid_images=2,
    log_interval=5)


@dataclass
class ModelResult:
    name: str
    clean: Dict[str, float]
    random: Dict[str, float]
    worst_case: Dict[str, float]
    attacker: Dict[str, float]
    train_seconds: float
    final_epoch: Dict = field(default_factory=dict)

    def drops(self) -> Dict[str, Dict[str, float]]:
        return {kind: {k: self.clean[k] - getattr(self, kind)[k] for k in self.clean}
                for kind in ('random', 'worst_case')}


def load_split(data_dir: str, split: str, img_size: int, limit: Optional[int] = None):
    """A split as one tensor of pixels in [0, 1] and its targets (the evaluation transform at crop_pct 1: no zoom)."""
    from timm.data import create_dataset, create_transform
    dataset = create_dataset('', root=data_dir, split=split, is_training=False)
    dataset.transform = create_transform(
        (3, img_size, img_size), is_training=False, crop_pct=1.0, mean=(0., 0., 0.), std=(1., 1., 1.))
    indices = range(len(dataset))
    if limit is not None and limit < len(dataset):
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].tolist()
    images, targets = zip(*(dataset[i] for i in indices))
    return torch.stack(images), torch.tensor(targets)


def _train_one(config: DemoConfig, data_dir: str, output_dir: str, rspc: bool):
    from timm_rspc.train import parse_args, train
    args, _ = parse_args(config.train_argv(data_dir, output_dir, rspc))
    start = time.perf_counter()
    result = train(args)
    # The trainer's closing --result block goes to stdout, its log to stderr. Without a terminal stdout is
    # block-buffered: unflushed, the baseline's block came out inside the RSPC run's log (or after it, beside the
    # RSPC block), flushed by whichever process wrote next. Each run's block belongs right after that run.
    sys.stdout.flush()
    return result, time.perf_counter() - start


def analyse(models: Dict, config: DemoConfig, val, fit_images: torch.Tensor, output_dir: str) -> Dict:
    """The sensitivity and attention-stability analyses of both models; writes the attention grid figure."""
    from timm_rspc.analysis import (
        CORRUPTIONS, FixedPatchMasks, NoiseOcclusion, PatchCorruption, PatchPGD, WorstCasePatches,
        evaluate_attention_stability, evaluate_sensitivity, query_attention_maps,
    )
    from timm_rspc.analysis.perturbations import patch_grid
    images, targets = val
    size = config.eval_batch_size
    batches = [(images[i:i + size], targets[i:i + size]) for i in range(0, images.shape[0], size)]
    ratio, seed = config.occlusion_ratio, config.eval_seed
    perturbations = [
        NoiseOcclusion(),
        WorstCasePatches(fit_images, ratio=ratio, steps=config.attacker_steps, lr=config.attacker_lr, seed=seed + 1),
        PatchPGD(epsilon=config.pgd_epsilon, step_size=config.pgd_step_size, steps=config.pgd_steps),
        *(PatchCorruption(name, severity=config.corruption_severity) for name in CORRUPTIONS),
    ]
    started = time.perf_counter()
    sensitivity = evaluate_sensitivity(models, batches, perturbations, ratio=ratio, seed=seed)
    sensitivity_seconds = time.perf_counter() - started
    attention = evaluate_attention_stability(models, batches, ratio=ratio, seed=seed)
    out = {'sensitivity': sensitivity, 'attention': attention, 'figures': {},
           'runtime_seconds': {'sensitivity': sensitivity_seconds,
                               'attention': time.perf_counter() - started - sensitivity_seconds}}
    if config.grid_images > 0:
        from timm_rspc.analysis.plots import attention_grid_figure, require_matplotlib, save_figure
        try:
            require_matplotlib()
        except ImportError:
            return out
        picked = torch.linspace(0, images.shape[0] - 1, config.grid_images).round().long()  # spread over classes
        grid = patch_grid(next(iter(models.values())))[0]
        keep = FixedPatchMasks(grid, ratio, seed).rows(0, images.shape[0])[picked]
        maps = query_attention_maps(models, images[picked], keep, seed=seed)
        path = save_figure(attention_grid_figure(maps), os.path.join(output_dir, 'attention_grid.png'), dpi=90)
        out['figures']['attention_grid'] = path
    return out


def run_demo(config: DemoConfig, output_dir: str, data_dir: str) -> Dict:
    """Generate (or reuse) the data, train both models, evaluate them; returns the JSON-able report."""
    # RSPC's values are checked before the baseline trains, not when the RSPC run starts
    RSPCSettings(ratio=config.rspc_ratio, align_weight=config.rspc_lambda, corruption_lr=config.rspc_lr)
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, 'getloadavg') else None
    write_image_folder(data_dir, config.train_per_class, config.val_per_class, config.img_size, config.data_seed)
    data_seconds = time.perf_counter() - started

    trained, seconds, final_epochs = {}, {}, {}
    for rspc in (False, True):
        name = 'RSPC' if rspc else 'baseline'
        result, seconds[name] = _train_one(config, data_dir, output_dir, rspc)
        model = result.task.get_eval_model().eval()
        normalization = resolve_data_config({}, model=model)
        trained[name] = PixelModel(model, normalization['mean'], normalization['std'])
        final_epochs[name] = result.epochs[-1] if result.epochs else {}
    val = load_split(data_dir, 'validation', config.img_size)
    fit_images = load_split(data_dir, 'train', config.img_size, limit=config.attacker_fit_images)[0]
    analyses = analyse(trained, config, val, fit_images, output_dir)
    models: List[ModelResult] = []
    for name, res in analyses['sensitivity']['models'].items():
        perturbed = res['perturbed']
        models.append(ModelResult(
            name=name, clean=res['clean'], random=_scores(perturbed['noise_occlusion']),
            worst_case=_scores(perturbed['worst_case']), attacker=perturbed['worst_case']['attacker'],
            train_seconds=seconds[name], final_epoch=final_epochs[name]))

    grid = (config.img_size // config.patch_size,) * 2
    report = {
        'config': asdict(config),
        'occlusion': {'patches': num_occluded(grid, config.occlusion_ratio), 'of': grid[0] * grid[1],
                      'noise': 'uniform [0, 1) pixel noise'},
        'sensitivity': analyses['sensitivity'],
        'attention': analyses['attention'],
        'figures': analyses['figures'],
        'seeds': {'data': config.data_seed, 'training': config.seed, 'evaluation': config.eval_seed},
        'data': {'dir': data_dir, 'classes': list(CLASS_NAMES), 'train_images': config.train_per_class * 10,
                 'val_images': config.val_per_class * 10},
        'models': [dict(asdict(m), drop=m.drops()) for m in models],
        'runtime_seconds': {'total': time.perf_counter() - started, 'data': data_seconds,
                            **{f'train_{m.name}': m.train_seconds for m in models},
                            **{f'analysis_{k}': v for k, v in analyses['runtime_seconds'].items()}},
        'machine': {'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
                    'load_average_at_start': load_before,
                    'load_average_at_end': os.getloadavg() if hasattr(os, 'getloadavg') else None,
                    'torch': torch.__version__, 'python': platform.python_version()},
    }
    return report


def _scores(perturbed: Dict) -> Dict[str, float]:
    return {k: perturbed[k] for k in ('accuracy', 'confidence')}


def default_output_dir(root: str = os.path.join('.', 'output', 'demo')) -> str:
    return os.path.join(root, time.strftime('%Y%m%d-%H%M%S'))


def namespace_to_config(args: argparse.Namespace) -> DemoConfig:
    config = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ('epochs', 'seed', 'rspc_lambda') if getattr(args, k, None) is not None}
    return replace(config, **overrides)
