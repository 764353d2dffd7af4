"""``timm-rspc analyze sensitivity|attention``: the paper's two analyses for up to two models, side by side.

Models come by timm name with ``--pretrained`` or ``--checkpoint``, one ``--model`` per model, built the way they
were trained (`timm_rspc.bench.model.build_eval_model`: the checkpoint's stored arguments unless given here);
``--demo-run DIR`` takes both models and the data of a finished ``timm-rspc demo`` run. Data is an image folder
in timm's layout. Everything goes into a new run folder (``analysis.json``, CSV, PNG figures); an existing
non-empty folder is refused.
"""
import argparse
import json
import os
import time
from typing import Dict, List, Optional

from timm.utils import ParseKwargs

ANALYSES = ('sensitivity', 'attention')
DEFAULT_PERTURBATIONS = ('noise_occlusion', 'worst_case', 'pgd', 'gaussian_noise', 'impulse_noise', 'gaussian_blur',
                         'brightness', 'fog', 'contrast', 'pixelate')


def _fraction(text: str) -> float:
    """A float, or a fraction such as ``8/255`` (budgets are usually quoted in 1/255 units)."""
    try:
        if '/' in text:
            top, bottom = text.split('/')
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f'expected a number or a fraction like 8/255, got {text!r}') from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Models (up to two, compared side by side)')
    g.add_argument('--model', '-m', action='extend', nargs='+', default=[], metavar='NAME',
                   help='timm model name; repeat for a second model (e.g. a baseline and its RSPC counterpart)')
    g.add_argument('--checkpoint', action='extend', nargs='+', default=[], metavar='PATH',
                   help='weights of each --model, in the same order (release file, training checkpoint, '
                        'safetensors); the training arguments stored in it, or in the args.yaml beside it, build '
                        'the model (model_kwargs, num_classes, image size) unless given here')
    g.add_argument('--pretrained', action='store_true', help="the registry's pretrained weights of every --model")
    g.add_argument('--use-ema', action='store_true', help="the checkpoints' EMA weights (default: non-EMA)")
    g.add_argument('--label', action='extend', nargs='+', default=[], metavar='TEXT',
                   help='display name of each model in tables and plots (default: model name)')
    g.add_argument('--num-classes', type=int, metavar='N', help='number of classes of the checkpoints')
    g.add_argument('--img-size', type=int, metavar='N',
                   help="input image size (default: the checkpoint's, else the size the model was built for)")
    g.add_argument('--input-size', type=int, nargs=3, metavar='N', help='input dimensions C H W, e.g. 3 224 224')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='extra model build arguments for every model, e.g. img_size=32')
    g.add_argument('--demo-run', metavar='DIR',
                   help='a finished `timm-rspc demo` run: its baseline and RSPC models and validation images')
    d = parser.add_argument_group('Data and patches')
    d.add_argument('--data-dir', metavar='DIR', help="image folder in timm's layout (<root>/<split>/<class>/...)")
    d.add_argument('--split', default='validation', help='split folder under --data-dir (default: validation)')
    d.add_argument('--crop-pct', type=float, metavar='PCT', help="centre-crop fraction (default: the model's)")
    d.add_argument('--num-images', type=int, metavar='N', help='a seeded random subset of N images (default: all)')
    d.add_argument('-b', '--batch-size', type=int, default=None, metavar='N',
                   help="images per batch; the noise is drawn per batch (default: 64, a demo run's own)")
    d.add_argument('-j', '--workers', type=int, default=2, metavar='N', help='data loading processes (default 2)')
    d.add_argument('--device', default='cpu', help='torch device, e.g. cuda')
    d.add_argument('--ratio', type=float, default=0.1, help='fraction of patches perturbed per image (default 0.1)')
    d.add_argument('--seed', type=int, default=None,
                   help="seed of the patch masks, the noise and the attacks (default: 0, a demo run's own)")
    parser.add_argument('--output', metavar='DIR',
                        help='new folder for this run (default: ./output/analyze/<analysis>-<date-time>)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-rspc analyze', description='Patch sensitivity and attention stability of timm models.')
    sub = parser.add_subparsers(dest='analysis', metavar='ANALYSIS', required=True)
    s = sub.add_parser('sensitivity', help='accuracy / confidence drop with a fixed 10%% of the patches perturbed')
    _add_common(s)
    p = s.add_argument_group('Perturbations')
    p.add_argument('--perturbations', nargs='+', default=list(DEFAULT_PERTURBATIONS), metavar='NAME',
                   help=f'any of: {", ".join(DEFAULT_PERTURBATIONS)} (default: all)')
    p.add_argument('--pgd-epsilon', type=_fraction, default=8 / 255, help='L_inf budget in pixels (default 8/255)')
    p.add_argument('--pgd-step-size', type=_fraction, default=2 / 255, help='PGD step (default 2/255)')
    p.add_argument('--pgd-steps', type=int, default=10)
    p.add_argument('--severity', type=int, default=3, help='common-corruption severity 1..5 (default 3)')
    p.add_argument('--worst-case-steps', type=int, default=60, help='steps fitting the corruption model')
    p.add_argument('--worst-case-lr', type=float, default=0.01)
    p.add_argument('--worst-case-fit-images', type=int, default=512,
                   help='images (the first of the data) the corruption model is fitted on')
    a = sub.add_parser('attention', help='per-layer change of the attention maps, clean vs patch-corrupted')
    _add_common(a)
    g = a.add_argument_group('Attention maps')
    g.add_argument('--attention-layers', nargs='+', metavar='PATTERN',
                   help="AttentionExtract name patterns (default: '*attn.softmax' nodes / '*attn_drop' modules)")
    g.add_argument('--attention-method', choices=('fx', 'hook'), default='fx',
                   help="AttentionExtract's method: graph tracing (default) or forward hooks")
    g.add_argument('--grid-images', type=int, default=4, help='images in the attention grid figure (0: none)')
    g.add_argument('--grid-layer', metavar='NAME', help='layer shown in the grid (default: the last)')
    g.add_argument('--query-patch', metavar='ROW,COL', help='query patch of the grid (default: the centre patch)')
    return parser


def _demo_run_models(run: str) -> Dict:
    path = os.path.join(run, 'demo.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' not found; --demo-run takes the folder of a finished `timm-rspc demo`.")
    with open(path) as f:
        demo = json.load(f)
    config = demo['config']
    kwargs = {k: config[k] for k in ('patch_size', 'embed_dim', 'depth', 'num_heads')}
    kwargs['img_size'] = config['img_size']
    return dict(names=[config['model']] * 2, labels=['baseline', 'RSPC'], num_classes=len(demo['data']['classes']),
                kwargs=kwargs, seed=config['eval_seed'], batch_size=config.get('eval_batch_size', 64),
                checkpoints=[os.path.join(run, 'baseline', 'last.pth.tar'), os.path.join(run, 'rspc', 'last.pth.tar')],
                data_dir=demo['data']['dir'])


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.demo_run:
        if args.model or args.checkpoint or args.pretrained:
            parser.error('--demo-run brings its own models; leave out --model / --checkpoint / --pretrained')
        return
    if not args.model:
        parser.error('give a model: --model NAME (twice to compare two), or --demo-run DIR')
    if len(args.model) > 2:
        parser.error(f'at most two models are compared side by side, got {len(args.model)}')
    if args.pretrained == bool(args.checkpoint):
        parser.error('give the weights: --pretrained, or one --checkpoint per --model')
    if args.checkpoint and len(args.checkpoint) != len(args.model):
        parser.error(f'{len(args.model)} --model but {len(args.checkpoint)} --checkpoint; give one per model')
    if args.label and len(args.label) != len(args.model):
        parser.error(f'{len(args.model)} --model but {len(args.label)} --label; give one per model or none')
    if not args.data_dir:
        parser.error("give the images: --data-dir DIR (timm's image-folder layout)")
    if args.use_ema and not args.checkpoint:
        parser.error('--use-ema picks the EMA weights of the checkpoints; give --checkpoint')
    if args.img_size is not None and args.input_size is not None:
        parser.error('give --img-size or --input-size, not both')


def _check_paths(args: argparse.Namespace) -> None:
    """Files and folders named on the command line, before any model is built (one line each, exit 2)."""
    for path in args.checkpoint:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--checkpoint file '{path}' does not exist.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f'--batch-size must be at least 1, got {args.batch_size}.')
    if args.workers < 0:
        raise ValueError(f'--workers must be 0 or more, got {args.workers}.')
    if args.data_dir:
        _check_image_folder(args.data_dir, args.split)
    from timm_rspc.models.build import check_model_name
    for name in args.model:
        check_model_name(name)


def _check_image_folder(root: str, split: str) -> None:
    """timm's image-folder reader reads ``root/split`` if it exists (``val`` and ``validation`` alike), else root."""
    from timm.data.readers.img_extensions import get_img_extensions
    if not os.path.isdir(root):
        raise NotADirectoryError(f"--data-dir folder '{root}' does not exist.")
    aliases = {'validation': ('validation', 'val'), 'val': ('val', 'validation')}.get(split, (split,))
    folder = next((os.path.join(root, a) for a in aliases if os.path.isdir(os.path.join(root, a))), root)
    extensions = tuple(get_img_extensions())
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(extensions) for f in files):
            return
    raise FileNotFoundError(f"--data-dir: no images ({', '.join(extensions)}) under '{folder}'; give an image folder "
                            "in timm's layout (<root>/<split>/<class>/<image>).")


def _load_models(args: argparse.Namespace):
    import torch
    from timm_rspc.analysis import PixelModel
    from timm_rspc.bench.model import build_eval_model, check_input_size, eval_data_config
    if args.demo_run:
        demo = _demo_run_models(args.demo_run)
        names, labels, checkpoints = demo['names'], demo['labels'], demo['checkpoints']
        num_classes, kwargs, args.data_dir = demo['num_classes'], demo['kwargs'], args.data_dir or demo['data_dir']
        args.crop_pct = 1.0 if args.crop_pct is None else args.crop_pct  # the demo's evaluation transform
        # The demo's masks, noise and batches: the same numbers as its own analyses.
        args.seed = demo['seed'] if args.seed is None else args.seed
        args.batch_size = demo['batch_size'] if args.batch_size is None else args.batch_size
    else:
        names, checkpoints = args.model, args.checkpoint or [None] * len(args.model)
        labels = args.label or _default_labels(names, checkpoints)
        num_classes, kwargs = args.num_classes, dict(args.model_kwargs or {})
    if len(set(labels)) != len(labels):
        raise ValueError(f'the models need distinct --label values, got {labels}.')
    models = {}
    for name, label, checkpoint in zip(names, labels, checkpoints):
        built = build_eval_model(
            name, pretrained=bool(args.pretrained), checkpoint=checkpoint, model_kwargs=kwargs,
            num_classes=num_classes or None, img_size=getattr(args, 'img_size', None),
            input_size=getattr(args, 'input_size', None), use_ema=bool(getattr(args, 'use_ema', False)),
            use_recorded_args=not args.demo_run)
        # A given or recorded size is the analysed size (and sets the patch grid); else the model's own.
        img_size = tuple(eval_data_config(built)['input_size'][1:]) if built.size else None
        if img_size is not None:
            check_input_size(built.model, (built.build.get('in_chans', 3), *img_size), name)
        models[label] = PixelModel(built.model.to(torch.device(args.device)).eval(), img_size=img_size)
        # recorded in analysis.json ('arguments'): how each model was built
        args.model_builds = dict(getattr(args, 'model_builds', {}), **{label: dict(
            model_kwargs={k: v for k, v in built.build.items() if k != 'num_classes'},
            num_classes=built.build.get('num_classes'), build_args_from=built.recorded_from,
            weights=built.source)})
    return models


def _default_labels(names: List[str], checkpoints: List[Optional[str]]) -> List[str]:
    if len(set(names)) == len(names):
        return list(names)
    return [f'{n} ({os.path.basename(c)})' if c else n for n, c in zip(names, checkpoints)]


def _perturbations(args, models, loader):
    import torch
    from timm_rspc.analysis import CORRUPTIONS, NoiseOcclusion, PatchCorruption, PatchPGD, WorstCasePatches
    chosen = []
    for name in args.perturbations:
        if name == 'noise_occlusion':
            chosen.append(NoiseOcclusion())
        elif name == 'pgd':
            chosen.append(PatchPGD(epsilon=args.pgd_epsilon, step_size=args.pgd_step_size, steps=args.pgd_steps))
        elif name in CORRUPTIONS:
            chosen.append(PatchCorruption(name, severity=args.severity))
        elif name == 'worst_case':
            fit, seen = [], 0
            for pixels, _ in loader:
                fit.append(pixels)
                seen += pixels.shape[0]
                if seen >= args.worst_case_fit_images:
                    break
            device = next(iter(models.values())).mean.device
            chosen.append(WorstCasePatches(
                torch.cat(fit)[:args.worst_case_fit_images].to(device), ratio=args.ratio, steps=args.worst_case_steps,
                lr=args.worst_case_lr, seed=args.seed))
        else:
            raise ValueError(f"unknown perturbation '{name}'; choose from {', '.join(DEFAULT_PERTURBATIONS)}.")
    return chosen


def _parse_query(text: Optional[str], models) -> Optional[int]:
    if text is None:
        return None
    from timm_rspc.analysis.perturbations import patch_grid
    grid = patch_grid(next(iter(models.values())))[0]
    try:
        row, col = (int(v) for v in text.split(','))
    except ValueError:
        raise ValueError(f'--query-patch takes ROW,COL (e.g. 3,4), got {text!r}.') from None
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        raise ValueError(f'--query-patch {text} lies outside the {grid[0]}x{grid[1]} patch grid.')
    return row * grid[1] + col


def run_analysis(args: argparse.Namespace) -> int:
    from timm_rspc.analysis import report
    from timm_rspc.analysis.data import image_folder_loader, pixel_data_config
    from timm_rspc.analysis.plots import PLOT_EXTRA_HINT, require_matplotlib, save_figure
    output = args.output or os.path.join('.', 'output', 'analyze', f"{args.analysis}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"'{output}' already exists and is not empty; choose a new --output folder.")
    models = _load_models(args)
    args.seed = 0 if args.seed is None else args.seed
    args.batch_size = 64 if args.batch_size is None else args.batch_size
    configs = {label: pixel_data_config(m.model, args.crop_pct, m.img_size) for label, m in models.items()}
    sizes = {label: list(c['input_size']) for label, c in configs.items()}
    if len({tuple(v) for v in sizes.values()}) > 1:
        raise ValueError(f'the models take different input sizes ({sizes}); the analyses compare them on the same '
                         'images: give --img-size.')
    args.input_size_evaluated = next(iter(sizes.values()))  # recorded in analysis.json ('arguments')
    loader = image_folder_loader(args.data_dir, args.split, next(iter(configs.values())),
                                 batch_size=args.batch_size, num_images=args.num_images, seed=args.seed,
                                 workers=args.workers)
    report.create_run_folder(output)
    written = []
    try:
        require_matplotlib()
        plotting = True
    except ImportError:
        plotting = False
    if args.analysis == 'sensitivity':
        from timm_rspc.analysis import evaluate_sensitivity, sensitivity_figure, sensitivity_rows
        result = evaluate_sensitivity(models, loader, _perturbations(args, models, loader), args.ratio, args.seed)
        table = report.format_sensitivity_table(result)
        written.append(report.write_csv(os.path.join(output, 'sensitivity.csv'), sensitivity_rows(result)))
        if plotting:
            written.append(save_figure(sensitivity_figure(result), os.path.join(output, 'sensitivity.png')))
    else:
        from timm_rspc.analysis import (
            attention_grid_figure, attention_stability_figure, evaluate_attention_stability, query_attention_maps)
        from timm_rspc.analysis.masks import FixedPatchMasks
        from timm_rspc.analysis.perturbations import patch_grid
        extract = dict(names=args.attention_layers, method=args.attention_method)
        result = evaluate_attention_stability(models, loader, args.ratio, args.seed, **extract)
        table = report.format_attention_table(result)
        written.append(report.write_csv(os.path.join(output, 'attention.csv'), report.attention_rows(result)))
        if plotting:
            written.append(save_figure(attention_stability_figure(result), os.path.join(output, 'attention.png')))
            if args.grid_images > 0:
                pixels = next(iter(loader))[0][:args.grid_images]
                keep = FixedPatchMasks(patch_grid(next(iter(models.values())))[0], args.ratio, args.seed).rows(
                    0, pixels.shape[0])
                maps = query_attention_maps(models, pixels, keep, layer=args.grid_layer,
                                            query_patch=_parse_query(args.query_patch, models), seed=args.seed,
                                            **extract)
                grid_path = os.path.join(output, 'attention_grid.png')
                written.append(save_figure(attention_grid_figure(maps), grid_path))
    result['arguments'] = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, dict))}
    written.insert(0, report.write_json(result, os.path.join(output, 'analysis.json')))
    print(table)
    for path in written:
        print(f'written: {path}')
    if not plotting:
        print(f'no plots: {PLOT_EXTRA_HINT}')
    return 0


def main(argv: List[str]) -> int:
    from timm_rspc.cli._errors import reported_errors
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    with reported_errors('analyze'):
        _check_paths(args)
        return run_analysis(args)
