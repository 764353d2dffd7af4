"""``run_benchmark``: one model over the given benchmark data sets, into a resumable run folder."""
import json
import os
import platform
import sys
import time
from typing import Any, Dict, Optional, Sequence

import torch
import torch.distributed as dist

from timm_rspc.files import atomic_write_json

from .evaluate import AMP_DTYPES, WORKERS, Evaluator, amp_dtype_name
from .model import EvalModel, build_eval_model, check_input_size, eval_data_config
from .on_the_fly import (
    CorruptOptions, check_frost_fits, constants_size_warning, corruption_plan, read_image_folder,
    read_reference_results,
)
from .reference import IMAGENET_P_PERTURBATIONS
from .report import table, write_plot, write_summary_csv
from .run_folder import RESULTS_FILE, BenchmarkFolder
from .splits import DATASET_ROOTS, Split, plan_splits
from .summary import paper_results, summarise

__all__ = ['load_model', 'run_benchmark', 'BenchmarkInterrupted', 'IMAGENET_C_TRANSFORMS']

IMAGENET_C_TRANSFORMS = ('authors', 'model')


def load_model(model_name: str, pretrained: bool = False, checkpoint: Optional[str] = None,
               model_kwargs: Optional[Dict[str, Any]] = None, **kwargs):
    """The model built the way it was trained, its weights loaded strictly; returns (model, source).

    `model.build_eval_model` with the arguments stored in the checkpoint as defaults (``num_classes``,
    ``img_size``, ``input_size``, ``use_ema``, ``use_recorded_args`` are passed on).
    """
    built = build_eval_model(model_name, pretrained=pretrained, checkpoint=checkpoint, model_kwargs=model_kwargs,
                             **kwargs)
    return built.model, built.source


def _transforms(built: EvalModel, imagenet_c_transform: str):
    """The model's eval transform (uint8 output; normalised on the device) and the one for ImageNet-C."""
    from timm.data import create_transform
    from timm.data.transforms import MaybePILToTensor
    from torchvision import transforms
    if imagenet_c_transform not in IMAGENET_C_TRANSFORMS:
        raise ValueError(f"imagenet_c_transform must be one of {IMAGENET_C_TRANSFORMS}, got '{imagenet_c_transform}'.")
    config = eval_data_config(built)
    eval_transform = create_transform(**config, is_training=False, use_prefetcher=True)
    crop = tuple(config['input_size'][1:])
    # The authors' ImageNet-C evaluation: the images are already 224 x 224; center crop, no resize.
    authors = transforms.Compose([transforms.CenterCrop(crop), MaybePILToTensor()])
    return config, eval_transform, authors if imagenet_c_transform == 'authors' else eval_transform, crop


def _read_imagenet_p_reference(path: Optional[str]) -> Optional[Dict[str, Dict[str, float]]]:
    if not path:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--imagenet-p-reference file '{path}' does not exist.")
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
    if split.corruption is not None:
        correct, references, total = evaluator.top1_correct_corrupted(dataset, what, split.corruption)
        record = {'correct': correct, 'total': total}
        if references:
            record['reference_correct'] = references[0]
        return record
    if split.video_noise is None:
        correct, total = evaluator.top1_correct(dataset, what, split.logit_indices)
        return {'correct': correct, 'total': total}
    # About 30 frames a video: batches of whole videos near the image batch size.
    videos_per_batch = max(1, evaluator.batch_size // 30)
    flips, distance, pairs = evaluator.video_stability(dataset, what, split.video_noise, videos_per_batch)
    return {'flip_probability': (flips / pairs).mean().item(), 'top5_distance': (distance / pairs).mean().item(),
            'videos': len(dataset), 'comparisons': int(pairs.sum().item())}


def _one_line(split: Split, record: Dict[str, Any]) -> str:
    if 'reference_correct' in record:
        return (f"{split.key:<40} top-1 {100 * record['correct'] / record['total']:6.2f}%  reference "
                f"{100 * record['reference_correct'] / record['total']:6.2f}%  ({record['total']} images)")
    if 'correct' in record:
        return f"{split.key:<40} top-1 {100 * record['correct'] / record['total']:6.2f}%  ({record['total']} images)"
    return (f"{split.key:<40} FP {100 * record['flip_probability']:6.2f}%  T5D {record['top5_distance']:.4f}  "
            f"({record['videos']} videos)")


def _on_a_terminal(stream) -> bool:
    """Progress bars only where someone watches them: in a log file (no TTY) tqdm's carriage returns are noise, and
    every finished split prints its one line anyway."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class BenchmarkInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: what is saved (``finished`` of ``total`` splits in ``output``) for the message."""

    def __init__(self, output: Optional[str], finished: int, total: int):
        super().__init__(output, finished, total)
        self.output, self.finished, self.total = output, finished, total


def _check_run_values(batch_size: int, workers: int, device: Optional[str], amp: Optional[str]) -> str:
    """The run's own values, checked before a model is built or a folder created; returns the device."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'--batch-size must be at least 1, got {batch_size}.')
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f'--workers must be 0 or more, got {workers}.')
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"--amp-dtype must be float16 or bfloat16, got '{amp}'.")
    if device is None:
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        return f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        available = 'cuda' if torch.cuda.is_available() else 'cpu'
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"--device {device} is not usable here ({reason}); use --device {available} or leave "
                         "--device out.") from None
    return device


def _corrupt_options(corrupt: Optional[str], options) -> Optional[CorruptOptions]:
    """The checked options of ``corrupt`` (a `CorruptOptions`, a dict of its fields, or None: the defaults)."""
    if isinstance(options, dict):
        options = CorruptOptions(**options)
    if not corrupt:
        if options is not None and options != CorruptOptions():
            raise ValueError('--corruptions, --extra, --severities, --corruption-seed, --corrupt-jpeg-quality, '
                             '--corruption-constants and --reference-* choose how --corrupt DIR is corrupted and '
                             'compared; give --corrupt DIR.')
        return None
    return (options or CorruptOptions()).resolved()


def _corrupt_reference(options: CorruptOptions, plan: Dict[str, Any], built: EvalModel, input_size):
    """The reference of CE / mCE: (record for settings.json, [(model, mean, std)] evaluated in this run)."""
    if options.reference_results:
        return read_reference_results(options.reference_results, plan), []
    if not options.reference_model:
        return None, []
    reference = build_eval_model(options.reference_model, pretrained=not options.reference_checkpoint,
                                 checkpoint=options.reference_checkpoint)
    if reference.model.num_classes != built.model.num_classes:
        raise ValueError(f"--reference-model {options.reference_model} has {reference.model.num_classes} classes, "
                         f"the model {built.model.num_classes}: the reference must classify the same classes.")
    check_input_size(reference.model, input_size, options.reference_model)
    config = eval_data_config(reference)
    record = {'kind': 'model', 'model': options.reference_model, 'weights': reference.source,
              'mean': list(config['mean']), 'std': list(config['std'])}
    return record, [(reference.model, config['mean'], config['std'])]


def _check_paths(roots: Dict[str, Optional[str]], imagenet_c_labels: Optional[str]) -> None:
    for key, root in roots.items():
        if root and not os.path.isdir(root):
            raise FileNotFoundError(f"--{key.replace('_', '-')} folder '{root}' does not exist.")
    if imagenet_c_labels and not os.path.isfile(imagenet_c_labels):
        raise FileNotFoundError(f"--imagenet-c-labels file '{imagenet_c_labels}' does not exist.")


def _check_every_dataset_has_splits(roots: Dict[str, Optional[str]], splits) -> None:
    """``allow_partial`` evaluates an incomplete copy; a data set without a single split is an error."""
    for key, root in roots.items():
        if root and not any(s.dataset == key for s in splits):
            expected = {'imagenet_c': '<corruption>/<severity>/ folders such as gaussian_noise/1',
                        'imagenet_p': '<perturbation>/ folders such as gaussian_noise',
                        }.get(key, '<corruption>.npy files such as gaussian_noise.npy')
            raise FileNotFoundError(f"--{key.replace('_', '-')}: '{root}' holds none of {DATASET_ROOTS[key]}'s "
                                    f"splits (expected {expected}); --allow-partial evaluates an incomplete copy, "
                                    "not an empty one.")


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
        corrupt: Optional[str] = None,
        corrupt_options: Optional[CorruptOptions] = None,
        imagenet_c_labels: Optional[str] = None,
        imagenet_c_transform: str = 'authors',
        imagenet_p_reference: Optional[str] = None,
        allow_partial: bool = False,
        batch_size: int = 128,
        workers: int = WORKERS,
        device: Optional[str] = None,
        amp: Optional[str] = None,
        channels_last: Optional[bool] = None,
        resume: bool = False,
        progress: bool = True,
        plot: bool = True,
        verbose: bool = True,
        num_classes: Optional[int] = None,
        img_size: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
        use_ema: bool = False,
        use_recorded_args: bool = True,
) -> Dict[str, Any]:
    """Benchmark ``model_name`` on every data set folder given; returns what ``output/results.json`` holds.

    ``results`` holds the paper's metrics (``imagenet_top1``, ``imagenet_c_mce``, ... in percent, the names
    ``timm-rspc export --results`` reads), ``summary`` every figure per data set, ``splits`` the raw per-split counts.
    Under ``torchrun`` (an initialised process group) the images are split over the processes.

    The model is built the way it was trained: a checkpoint's stored training arguments (or the ``args.yaml``
    beside it) give ``model_kwargs``, ``num_classes`` and the input size unless given here (``use_recorded_args``
    off ignores them); ``img_size`` / ``input_size`` set the evaluated size as in timm's validate.py; ``use_ema``
    loads the checkpoint's EMA weights. ``amp``: ``'float16'`` or ``'bfloat16'`` autocast. ``progress`` bars are
    drawn only when stderr is a terminal; in a log file each finished split is one line. Every mistake that can
    be seen before evaluating (values, device, paths, model, input size, empty data sets) raises before the run
    folder is created. Ctrl-C raises `BenchmarkInterrupted`, which says what is saved.

    ``corrupt``: any image folder (``DIR/<class>/<image>``) evaluated under ImageNet-C's corruptions generated on
    the device from its clean images (`on_the_fly`), one split per corruption x severity; ``corrupt_options`` (an
    `on_the_fly.CorruptOptions` or a dict of its fields) picks corruptions, severities, the seed and the reference
    model or results that CE / mCE are relative to.
    """
    roots = dict(imagenet=imagenet, imagenet_c=imagenet_c, imagenet_a=imagenet_a, imagenet_r=imagenet_r,
                 imagenet_p=imagenet_p, imagenet_sketch=imagenet_sketch, imagenet_v2=imagenet_v2,
                 cifar10_c=cifar10_c, cifar100_c=cifar100_c, corrupt=corrupt)
    device = _check_run_values(batch_size, workers, device, amp)
    amp = amp_dtype_name(amp)
    options = _corrupt_options(corrupt, corrupt_options)
    _check_paths(roots, imagenet_c_labels)
    image_folder = read_image_folder(corrupt) if corrupt else None
    p_reference = _read_imagenet_p_reference(imagenet_p_reference)
    built = build_eval_model(model_name, pretrained=pretrained, checkpoint=checkpoint, model_kwargs=model_kwargs,
                             num_classes=num_classes, img_size=img_size, input_size=input_size, use_ema=use_ema,
                             use_recorded_args=use_recorded_args)
    model, source = built.model, built.source
    config, eval_transform, c_transform, crop = _transforms(built, imagenet_c_transform)
    check_input_size(model, config['input_size'], model_name)
    if imagenet_c and imagenet_c_transform == 'authors' and max(crop) > 224:
        raise ValueError(f"the authors' ImageNet-C preprocessing center-crops the 224 x 224 images, but this model "
                         f"takes {crop[0]} x {crop[1]}; pass --imagenet-c-transform model (its own resize and crop).")
    plan, references = None, []
    if image_folder is not None:
        labels, labels_kind = image_folder.labels(model.num_classes)
        check_frost_fits(options.names, options.constants, crop)
        plan = corruption_plan(image_folder, labels_kind, options, config['input_size'])
        plan['reference'], references = _corrupt_reference(options, plan, built, config['input_size'])
    splits, missing = plan_splits(roots, model.num_classes, eval_transform, c_transform, crop,
                                  imagenet_c_labels=imagenet_c_labels, allow_partial=allow_partial,
                                  corrupt=(image_folder, labels, options) if image_folder else None)
    _check_every_dataset_has_splits(roots, splits)
    rank = dist.get_rank() if dist.is_initialized() else 0
    settings = {
        'model': model_name, 'weights': source,
        'model_kwargs': {k: v for k, v in built.build.items() if k != 'num_classes'},
        'num_classes': model.num_classes, 'build_args_from': built.recorded_from,
        'input_size': list(config['input_size']),
        'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        'imagenet_c_transform': imagenet_c_transform, 'amp': amp,
        'channels_last': torch.device(device).type == 'cuda' if channels_last is None else channels_last,
        'datasets': {k: os.path.abspath(v) for k, v in roots.items() if v},
        'imagenet_c_labels': os.path.abspath(imagenet_c_labels) if imagenet_c_labels else None,
        'imagenet_p_reference': p_reference, 'allow_partial': allow_partial,
    }
    if plan is not None:
        settings['corrupt'] = plan
    folder = None
    say = print if verbose and rank == 0 else (lambda *a, **k: None)
    warning = constants_size_warning(options.constants, crop) if plan is not None else None
    if warning:
        say(f'timm-rspc bench: warning: {warning}')

    def open_folder():
        nonlocal folder
        folder = BenchmarkFolder(output, settings, resume=resume)
        return folder.finished_splits()
    records = _on_first_process(open_folder)
    try:
        return _run_splits(folder, records, splits, settings, model, model_name, config, output, device, batch_size,
                           workers, amp, progress, plot, imagenet_c_transform, p_reference, missing, say,
                           references)
    finally:
        if folder is not None:
            folder.close()


def _run_splits(folder, records, splits, settings, model, model_name, config, output, device, batch_size, workers,
                amp, progress, plot, imagenet_c_transform, p_reference, missing, say, references=()) -> Dict[str, Any]:
    """The evaluation of a claimed run folder: every split not yet recorded, then the summary and the outputs."""
    if folder is not None and folder.finished:  # --resume of a finished run: its results, nothing written
        with open(folder.file(RESULTS_FILE)) as f:
            results = json.load(f)
        say(f"timm-rspc bench: {model_name}: '{output}' is finished; its results:")
        say(table([(model_name, results['summary'])]))
        return results
    size = 'x'.join(str(v) for v in config['input_size'])
    say(f"timm-rspc bench: {model_name} at {size} ({len(splits)} splits, {len(records)} already done) -> {output}")
    evaluator = Evaluator(model, config['mean'], config['std'], device=device, batch_size=batch_size,
                          workers=workers, amp=amp, channels_last=settings['channels_last'],
                          progress=progress and _on_a_terminal(sys.stderr), references=references)
    started = time.time()
    try:
        for split in splits:
            if split.key in records:
                continue
            record = _evaluate(evaluator, split)
            records[split.key] = record
            if folder is not None:
                folder.write_split(split.key, record)
            say(_one_line(split, record))
    except KeyboardInterrupt:
        raise BenchmarkInterrupted(output, sum(s.key in records for s in splits), len(splits)) from None
    summary = summarise(records, imagenet_c_transform, p_reference, corrupt=settings.get('corrupt'))
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
        write_summary_csv(folder.file('results.csv'), summary)
        if plot:
            try:
                if write_plot(folder.file('results.png'), summary, model_name):
                    say(f"plot: {folder.file('results.png')}")
            except ImportError:
                say("plot skipped: matplotlib is not installed (pip install 'timm-rspc[plot]').")
        atomic_write_json(folder.file(RESULTS_FILE), results)  # last: its presence marks the run as finished
        say(table([(model_name, summary)]))
        say(f"results: {folder.file(RESULTS_FILE)}")
    return results
