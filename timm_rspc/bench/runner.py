"""``run_benchmark``: one model over the given benchmark data sets, into a resumable run folder."""
import hashlib
import json
import os
import platform
import sys
import time
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .evaluate import AMP_DTYPES, Evaluator
from .reference import IMAGENET_P_PERTURBATIONS
from .report import table, write_csv, write_plot
from .run_folder import RESULTS_FILE, RunFolder, write_json_atomic
from .splits import DATASET_ROOTS, Split, plan_splits
from .summary import paper_results, summarise

__all__ = ['load_model', 'run_benchmark', 'IMAGENET_C_TRANSFORMS']

IMAGENET_C_TRANSFORMS = ('authors', 'model')


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def load_model(model_name: str, pretrained: bool = False, checkpoint: Optional[str] = None,
               model_kwargs: Optional[Dict[str, Any]] = None):
    """``timm.create_model`` + the package's safe checkpoint loader (non-EMA, strict load); returns (model, source)."""
    import timm
    import timm_rspc  # noqa: F401  (registers RVT / FAN)
    from timm_rspc.models import load_checkpoint
    if pretrained and checkpoint:
        raise ValueError('give one source of weights: pretrained=True (--pretrained) or a checkpoint file, not both.')
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a randomly initialised model is the same in every process and every run
            model = timm.create_model(model_name, pretrained=pretrained, **(model_kwargs or {}))
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f"unknown model '{model_name}'; list the package's models with `timm-rspc models`.") from e
        raise
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint '{checkpoint}' does not exist.")
        load_checkpoint(model, checkpoint)
        source = {'checkpoint': os.path.abspath(checkpoint), 'sha256': _sha256(checkpoint), 'weights': 'non-ema'}
    elif pretrained:
        cfg = model.pretrained_cfg
        source = {'pretrained': f"{cfg.get('architecture', model_name)}.{cfg.get('tag', '')}".rstrip('.'),
                  'hf_hub_id': cfg.get('hf_hub_id'), 'url': cfg.get('url')}
    else:
        source = {'random_init': True}
    return model.eval(), source


def _transforms(model: nn.Module, imagenet_c_transform: str):
    """The model's eval transform (uint8 output; normalised on the device) and the one for ImageNet-C."""
    from timm.data import create_transform, resolve_data_config
    from timm.data.transforms import MaybePILToTensor
    from torchvision import transforms
    if imagenet_c_transform not in IMAGENET_C_TRANSFORMS:
        raise ValueError(f"imagenet_c_transform must be one of {IMAGENET_C_TRANSFORMS}, got '{imagenet_c_transform}'.")
    config = resolve_data_config(model=model)
    eval_transform = create_transform(**config, is_training=False, use_prefetcher=True)
    crop = tuple(config['input_size'][1:])
    # The authors' ImageNet-C evaluation: the images are already 224 x 224; center crop, no resize.
    authors = transforms.Compose([transforms.CenterCrop(crop), MaybePILToTensor()])
    return config, eval_transform, authors if imagenet_c_transform == 'authors' else eval_transform, crop


def _read_imagenet_p_reference(path: Optional[str]) -> Optional[Dict[str, Dict[str, float]]]:
    if not path:
        return None
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON: {e}") from None
    for key in ('flip_probability', 'top5_distance'):
        values = data.get(key) if isinstance(data, dict) else None
        missing = [p for p in IMAGENET_P_PERTURBATIONS if not isinstance((values or {}).get(p), (int, float))]
        if missing:
            raise ValueError(f"'{path}' needs {{\"{key}\": {{perturbation: AlexNet's value}}}} for all 10 "
                             f"perturbations (FP as a fraction, T5D as the reference code prints it); missing: "
                             f"{', '.join(missing)}.")
    return {k: {p: float(data[k][p]) for p in IMAGENET_P_PERTURBATIONS} for k in ('flip_probability', 'top5_distance')}


def _versions() -> Dict[str, str]:
    import numpy
    import timm
    import torchvision
    import timm_rspc
    versions = {'python': platform.python_version(), 'torch': torch.__version__, 'torchvision': torchvision.__version__,
                'timm': timm.__version__, 'timm_rspc': timm_rspc.__version__, 'numpy': numpy.__version__}
    try:
        import av
        versions['av'] = av.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        versions['cuda'] = torch.version.cuda
        versions['gpu'] = torch.cuda.get_device_name()
    return versions


def _on_first_process(fn):
    """Run ``fn`` on rank 0 and hand its result (or its error) to every process, so that no rank waits forever."""
    if not dist.is_initialized():
        return fn()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ('ok', fn())
        except (ValueError, OSError) as e:
            box[0] = ('error', e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == 'error':
        raise value
    return value


def _evaluate(evaluator: Evaluator, split: Split) -> Dict[str, Any]:
    what = DATASET_ROOTS[split.dataset] + ('' if split.name == 'all' else f' {split.name}')
    dataset = split.build()
    if split.video_noise is None:
        correct, total = evaluator.top1_correct(dataset, what, split.logit_indices)
        return {'correct': correct, 'total': total}
    # About 30 frames a video: batches of whole videos near the image batch size.
    videos_per_batch = max(1, evaluator.batch_size // 30)
    flips, distance, pairs = evaluator.video_stability(dataset, what, split.video_noise, videos_per_batch)
    return {'flip_probability': (flips / pairs).mean().item(), 'top5_distance': (distance / pairs).mean().item(),
            'videos': len(dataset), 'comparisons': int(pairs.sum().item())}


def _one_line(split: Split, record: Dict[str, Any]) -> str:
    if 'correct' in record:
        return f"{split.key:<40} top-1 {100 * record['correct'] / record['total']:6.2f}%  ({record['total']} images)"
    return (f"{split.key:<40} FP {100 * record['flip_probability']:6.2f}%  T5D {record['top5_distance']:.4f}  "
            f"({record['videos']} videos)")


def run_benchmark(
        model_name: str,
        output: str,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        imagenet: Optional[str] = None,
        imagenet_c: Optional[str] = None,
        imagenet_a: Optional[str] = None,
        imagenet_r: Optional[str] = None,
        imagenet_p: Optional[str] = None,
        imagenet_sketch: Optional[str] = None,
        imagenet_v2: Optional[str] = None,
        cifar10_c: Optional[str] = None,
        cifar100_c: Optional[str] = None,
        imagenet_c_labels: Optional[str] = None,
        imagenet_c_transform: str = 'authors',
        imagenet_p_reference: Optional[str] = None,
        allow_partial: bool = False,
        batch_size: int = 128,
        workers: int = 4,
        device: Optional[str] = None,
        amp: Optional[str] = None,
        channels_last: Optional[bool] = None,
        resume: bool = False,
        progress: bool = True,
        plot: bool = True,
        verbose: bool = True,
) -> Dict[str, Any]:
    """Benchmark ``model_name`` on every data set folder given; returns what ``output/results.json`` holds.

    ``results`` holds the paper's metrics (``imagenet_top1``, ``imagenet_c_mce``, ... in percent, the names
    ``timm-rspc export --results`` reads), ``summary`` every figure per data set, ``splits`` the raw per-split counts.
    Under ``torchrun`` (an initialised process group) the images are split over the processes.
    """
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got '{amp}'.")
    roots = dict(imagenet=imagenet, imagenet_c=imagenet_c, imagenet_a=imagenet_a, imagenet_r=imagenet_r,
                 imagenet_p=imagenet_p, imagenet_sketch=imagenet_sketch, imagenet_v2=imagenet_v2,
                 cifar10_c=cifar10_c, cifar100_c=cifar100_c)
    p_reference = _read_imagenet_p_reference(imagenet_p_reference)
    model, source = load_model(model_name, pretrained=pretrained, checkpoint=checkpoint, model_kwargs=model_kwargs)
    config, eval_transform, c_transform, crop = _transforms(model, imagenet_c_transform)
    if imagenet_c and imagenet_c_transform == 'authors' and max(crop) > 224:
        raise ValueError(f"the authors' ImageNet-C preprocessing center-crops the 224 x 224 images, but this model "
                         f"takes {crop[0]} x {crop[1]}; pass --imagenet-c-transform model (its own resize and crop).")
    splits, missing = plan_splits(roots, model.num_classes, eval_transform, c_transform, crop,
                                  imagenet_c_labels=imagenet_c_labels, allow_partial=allow_partial)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device is None:
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
    settings = {
        'model': model_name, 'weights': source, 'model_kwargs': dict(model_kwargs or {}),
        'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        'imagenet_c_transform': imagenet_c_transform, 'amp': amp,
        'channels_last': torch.device(device).type == 'cuda' if channels_last is None else channels_last,
        'datasets': {k: os.path.abspath(v) for k, v in roots.items() if v},
        'imagenet_c_labels': os.path.abspath(imagenet_c_labels) if imagenet_c_labels else None,
        'imagenet_p_reference': p_reference, 'allow_partial': allow_partial,
    }
    folder = None

    def open_folder():
        nonlocal folder
        folder = RunFolder(output, settings, resume=resume)
        return folder.finished_splits()
    records = _on_first_process(open_folder)
    say = print if verbose and rank == 0 else (lambda *a, **k: None)
    say(f"timm-rspc bench: {model_name} ({len(splits)} splits, {len(records)} already done) -> {output}")
    evaluator = Evaluator(model, config['mean'], config['std'], device=device, batch_size=batch_size,
                          workers=workers, amp=amp, channels_last=settings['channels_last'], progress=progress)
    started = time.time()
    for split in splits:
        if split.key in records:
            continue
        record = _evaluate(evaluator, split)
        records[split.key] = record
        if folder is not None:
            folder.write_split(split.key, record)
        say(_one_line(split, record))
    summary = summarise(records, imagenet_c_transform, p_reference)
    results = {
        'results': paper_results(summary),
        'source': f"timm-rspc bench ({', '.join(DATASET_ROOTS[k] for k in settings['datasets'])})",
        'model': model_name,
        'summary': summary,
        'splits': {s.key: records[s.key] for s in splits},
        'missing': missing,
        'settings': settings,
        'run': {'batch_size': batch_size, 'workers': workers, 'world_size': evaluator.world_size,
                'device': str(evaluator.device), 'seconds_this_session': round(time.time() - started, 1),
                'command': ' '.join(sys.argv)},
        'versions': _versions(),
    }
    if folder is not None:
        write_csv(folder.file('results.csv'), summary)
        if plot:
            try:
                if write_plot(folder.file('results.png'), summary, model_name):
                    say(f"plot: {folder.file('results.png')}")
            except ImportError:
                say("plot skipped: matplotlib is not installed (pip install 'timm-rspc[plot]').")
        write_json_atomic(folder.file(RESULTS_FILE), results)  # last: its presence marks the run as finished
        say(table([(model_name, summary)]))
        say(f"results: {folder.file(RESULTS_FILE)}")
    return results
