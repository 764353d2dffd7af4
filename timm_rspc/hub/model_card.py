"""Model cards (the Hub's ``README.md``) in timm's card layout, filled from what is known about the weights.

The layout is timm's own (`timm.models._hub.generate_readme`: front matter, Model Details, Model Usage, Model
Comparison, Citation); this module gathers the content:

* statistics measured on the model: parameters (M), GMACs (counted by `torch.utils.flop_counter.FlopCounterMode`
  on one image: matmuls, convolutions and attention; a multiply-add is one MAC), input size;
* results: the paper's table (`paper_results`) for released weights, and/or a results JSON for one's own run;
* the training recipe, from the run's ``args.yaml`` (or the arguments stored in the checkpoint);
* citations of RSPC and of the backbone paper, and the license.

Results JSON format (what a ``timm-rspc bench`` run writes as ``results.json``; keys are `CARD_METRICS` names:
`paper_results.METRICS` plus ``imagenet_c_relative_mce``; values in percent, unknown keys are an error)::

    {"results": {"imagenet_top1": 80.1, "imagenet_c_mce": 55.2},
     "images": {"imagenet_top1": 50000},               # optional: images (videos for ImageNet-P) per metric
     "source": "timm-rspc bench, 2026-01-01"}          # optional, shown under the table

A bench ``results.json`` also holds ``splits`` (the images of every split) and ``summary``: the card counts each
metric's images from ``splits`` and takes the relative mCE from ``summary`` when the run measured it. Every value is
shown with one decimal, next to its data set and the number of images it was measured on.
"""
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from timm_rspc.models.paper_results import (
    BASELINE_RESULTS, METRICS, PAPER_RESULTS, RSPC_CITATION, RSPC_CVF_URL, RSPC_PAPER,
)

__all__ = ['BackbonePaper', 'BACKBONE_PAPERS', 'CARD_METRICS', 'model_stats', 'read_results', 'published_results',
           'results_table', 'training_recipe', 'read_args_yaml', 'build_model_card', 'usage_source']

# The paper's metrics plus the relative mCE, which bench measures when it has clean ImageNet and ImageNet-C.
CARD_METRICS: Dict[str, Tuple[str, bool]] = {}
for _key, _value in METRICS.items():
    CARD_METRICS[_key] = _value
    if _key == 'imagenet_c_mce_no_noise':
        CARD_METRICS['imagenet_c_relative_mce'] = ('ImageNet-C relative mCE', False)


@dataclass(frozen=True)
class _MetricData:
    """What a metric is measured on: the data set as the card names it, the bench data set whose splits count its
    images, which splits count (None: all), the full set's size (None: not stated) and the unit counted."""
    name: str
    datasets: Tuple[str, ...]
    corruptions: Optional[Tuple[str, ...]] = None
    full_size: Optional[int] = None
    unit: str = 'images'


def _metric_data(key: str) -> _MetricData:
    from timm_rspc.bench.reference import IMAGENET_C_CORRUPTIONS, IMAGENET_C_NOISE
    no_noise = tuple(c for c in IMAGENET_C_CORRUPTIONS if c not in IMAGENET_C_NOISE)
    return {
        'imagenet_top1': _MetricData('ImageNet-1k val', ('imagenet',), None, 50_000),
        'imagenet_a_top1': _MetricData('ImageNet-A', ('imagenet_a',), None, 7_500),
        'imagenet_c_mce': _MetricData('ImageNet-C, 15 corruptions x 5 severities', ('imagenet_c',),
                                      IMAGENET_C_CORRUPTIONS, 75 * 50_000),
        'imagenet_c_mce_no_noise': _MetricData('ImageNet-C, 12 corruptions (no noise) x 5 severities',
                                               ('imagenet_c',), no_noise, 60 * 50_000),
        'imagenet_c_relative_mce': _MetricData('ImageNet-C, 15 corruptions x 5 severities, and ImageNet-1k val',
                                               ('imagenet_c', 'imagenet'), IMAGENET_C_CORRUPTIONS + ('all',),
                                               76 * 50_000),
        'imagenet_p_mfr': _MetricData('ImageNet-P, 10 perturbations', ('imagenet_p',), None, None, 'videos'),
        'cifar10_top1': _MetricData('CIFAR-10 test', ('cifar10',), None, 10_000),
        'cifar10_c_top1': _MetricData('CIFAR-10-C, 15 corruptions x 5 severities', ('cifar10_c',),
                                      IMAGENET_C_CORRUPTIONS, 75 * 10_000),
        'cifar100_top1': _MetricData('CIFAR-100 test', ('cifar100',), None, 10_000),
        'cifar100_c_top1': _MetricData('CIFAR-100-C, 15 corruptions x 5 severities', ('cifar100_c',),
                                       IMAGENET_C_CORRUPTIONS, 75 * 10_000),
    }[key]


@dataclass(frozen=True)
class BackbonePaper:
    label: str
    article: str  # of the label as it is read: 'An RVT', 'A FAN'
    title: str
    url: str
    bibtex: str


# Architecture name prefix -> the paper that introduced the backbone.
BACKBONE_PAPERS: Dict[str, BackbonePaper] = {
    'rvt': BackbonePaper(
        'RVT', 'An', 'Towards Robust Vision Transformer', 'https://arxiv.org/abs/2105.07926',
        """@inproceedings{mao2022towards,
  title={Towards Robust Vision Transformer},
  author={Mao, Xiaofeng and Qi, Gege and Chen, Yuefeng and Li, Xiaodan and Duan, Ranjie and Ye, Shaokai and He, Yuan and Xue, Hui},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  pages={12042--12051},
  year={2022}
}"""),
    'fan': BackbonePaper(
        'FAN', 'A', 'Understanding The Robustness in Vision Transformers', 'https://arxiv.org/abs/2204.12451',
        """@inproceedings{zhou2022understanding,
  title={Understanding The Robustness in Vision Transformers},
  author={Zhou, Daquan and Yu, Zhiding and Xie, Enze and Xiao, Chaowei and Anandkumar, Animashree and Feng, Jiashi and Alvarez, Jose M.},
  booktitle={International Conference on Machine Learning},
  pages={27378--27394},
  year={2022},
  organization={PMLR}
}"""),
}

# License ids the Hub knows (front matter ``license:``); any other id a pretrained cfg names is written as
# ``license: other`` with its name and a link.
_HUB_LICENSES = {'apache-2.0', 'mit', 'bsd-3-clause', 'cc-by-4.0', 'cc-by-nc-4.0', 'cc-by-sa-4.0', 'openrail'}
_LICENSE_LINKS = {'nvidia-source-code-license-nc': 'https://github.com/NVlabs/FAN/blob/master/LICENSE'}

# Datasets named by the parts of a pretrained tag (timm's naming: 'rspc_in1k', 'in22k_ft_in1k_384').
_TAG_DATASETS = {'in1k': 'ImageNet-1k', 'in22k': 'ImageNet-22k', 'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}

# Training arguments worth showing in a card (timm ``train.py`` names; the official scripts' RSPC names too).
# Anything else in args.yaml (paths, logging, distributed settings) is left out on purpose.
_RECIPE_KEYS = (
    'model', 'dataset', 'epochs', 'batch_size', 'grad_accum_steps', 'opt', 'opt_eps', 'opt_betas', 'momentum',
    'weight_decay', 'clip_grad', 'lr', 'lr_base', 'lr_base_size', 'warmup_lr', 'min_lr', 'sched', 'warmup_epochs',
    'cooldown_epochs', 'decay_epochs', 'input_size', 'img_size', 'crop_pct', 'interpolation', 'train_interpolation',
    'smoothing', 'mixup', 'cutmix', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode', 'aa', 'reprob', 'remode',
    'recount', 'color_jitter', 'drop', 'drop_path', 'model_ema', 'model_ema_decay', 'amp', 'amp_dtype', 'seed',
    'occlusion_ratio', 'extra_weight', 'use_rspc',
)


def _backbone(architecture: str) -> Optional[BackbonePaper]:
    return next((p for prefix, p in BACKBONE_PAPERS.items() if architecture.startswith(prefix)), None)


@torch.no_grad()
def model_stats(model: nn.Module) -> Dict[str, Any]:
    """Parameters (M), GMACs for one image at the model's input size, and that input size."""
    from timm_rspc._timm_compat import get_model_input_config
    from torch.utils.flop_counter import FlopCounterMode
    input_size = tuple(get_model_input_config(model)['input_size'])
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros((1, *input_size), dtype=param.dtype, device=param.device))
    model.train(was_training)
    return {
        'params_m': round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        'gmacs': float(f'{counter.get_total_flops() / 2 / 1e9:.3g}'),
        'input_size': input_size,
    }


def _counted(key: str, splits: Dict[str, Any]) -> Optional[int]:
    """Images (videos for ImageNet-P) of the bench splits behind ``key``; None when the splits do not say."""
    data = _metric_data(key)
    total, found = 0, False
    for split, record in splits.items():
        dataset, _, rest = str(split).partition('/')
        if dataset not in data.datasets or not isinstance(record, dict):
            continue
        if data.corruptions is not None and rest.split('/')[0] not in data.corruptions:
            continue
        count = record.get('videos' if data.unit == 'videos' else 'total')
        if isinstance(count, int) and not isinstance(count, bool):
            total, found = total + count, True
    return total if found else None


def read_results(path: str) -> Dict[str, Any]:
    """Read and check a results JSON (``{"results": {metric: value}, "images"?: {metric: n}, "source"?: str}``, or a
    bench ``results.json``); see the module doc. Returns ``results``, ``images`` (per metric, where known) and
    ``source``."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON: {e}") from e
    results = data.get('results') if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise ValueError(f"'{path}' must hold {{\"results\": {{metric: value, ...}}}} with at least one metric.")
    unknown = sorted(set(results) - set(CARD_METRICS))
    if unknown:
        raise ValueError(f"'{path}' has unknown metrics {unknown}; known metrics: {', '.join(CARD_METRICS)}.")
    for key, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"'{path}': metric '{key}' must be a number (percent), got {value!r}.")
    results = dict(results)
    summary = data.get('summary') if isinstance(data.get('summary'), dict) else {}
    imagenet_c = summary.get('imagenet_c') if isinstance(summary.get('imagenet_c'), dict) else {}
    relative = imagenet_c.get('relative_mce')
    if 'imagenet_c_relative_mce' not in results and isinstance(relative, (int, float)) and \
            not isinstance(relative, bool):
        results['imagenet_c_relative_mce'] = relative  # measured by bench (clean ImageNet and all of ImageNet-C)
    images: Dict[str, int] = {}
    given = data.get('images') or {}
    if not isinstance(given, dict) or any(k not in results or isinstance(v, bool) or not isinstance(v, int) or v < 1
                                          for k, v in given.items()):
        raise ValueError(f"'{path}': \"images\" must map metrics of \"results\" to image counts (integers >= 1), "
                         f"got {given!r}.")
    splits = data.get('splits') if isinstance(data.get('splits'), dict) else {}
    for key in results:
        count = given.get(key) or _counted(key, splits)
        if count is not None:
            images[key] = count
    return {'results': results, 'images': images, 'source': data.get('source')}


def published_results(name: str) -> Dict[str, float]:
    """The paper's numbers for released weights ``arch.tag``: RSPC tags from its table, ``.in1k`` baselines too."""
    if name in PAPER_RESULTS:
        return dict(PAPER_RESULTS[name])
    arch, _, tag = name.partition('.')
    if tag == 'in1k' and arch in BASELINE_RESULTS:
        return dict(BASELINE_RESULTS[arch])
    return {}


def _format_value(value: Optional[float]) -> str:
    """Every value with one decimal (57.0, 97.7), the precision of the paper's ImageNet table."""
    return '-' if value is None else f'{value:.1f}'


def _format_count(key: str, count: Optional[int]) -> str:
    """'32 of 50,000 images' for a subset, '50,000 images' for the full set, 'images not stated' when unknown."""
    data = _metric_data(key)
    if count is None:
        return f'{data.unit} not stated'
    if data.full_size is not None and count < data.full_size:
        return f'{count:,} of {data.full_size:,} {data.unit}'
    return f'{count:,} {data.unit}'


def results_table(columns: Sequence[Tuple[Any, ...]]) -> str:
    """Markdown table, one row per metric of the first column (in `CARD_METRICS` order), one column per results set.

    A column is ``(title, results)`` or ``(title, results, images)``; with ``images`` (a dict, possibly empty: a
    measurement) every cell names how many images its value was measured on. The data set column names what the
    metric is measured on.
    """
    if not columns:
        return ''
    rows = [k for k in CARD_METRICS if k in columns[0][1]]
    lines = ['| Metric | Data set | ' + ' | '.join(column[0] for column in columns) + ' |',
             '|---|---|' + '---:|' * len(columns)]
    for key in rows:
        label, higher_is_better = CARD_METRICS[key]
        arrow = '↑' if higher_is_better else '↓'
        cells = []
        for column in columns:
            value = column[1].get(key)
            cell = _format_value(value)
            if len(column) > 2 and column[2] is not None and value is not None:
                cell += f' ({_format_count(key, column[2].get(key))})'
            cells.append(cell)
        lines.append(f'| {label} ({arrow}) | {_metric_data(key).name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def read_args_yaml(path: str) -> Dict[str, Any]:
    """A training run's ``args.yaml`` as a dict."""
    import yaml
    with open(path) as f:
        args = yaml.safe_load(f)
    if not isinstance(args, dict):
        raise ValueError(f"'{path}' does not hold a mapping of training arguments.")
    return args


def training_recipe(args: Dict[str, Any]) -> Dict[str, Any]:
    """The recipe-relevant training arguments (see `_RECIPE_KEYS`, plus every ``rspc*`` key), unset ones dropped."""
    keys = list(_RECIPE_KEYS) + sorted(k for k in args if k.startswith('rspc') and k not in _RECIPE_KEYS)
    recipe = {}
    for key in keys:
        value = args.get(key)
        if value is None or value == '' or (isinstance(value, (list, tuple, dict)) and not value):
            continue
        recipe[key] = list(value) if isinstance(value, tuple) else value
    return recipe


def _recipe_section(recipe: Dict[str, Any], source: str) -> str:
    lines = ['## Training', '', f'Training arguments ({source}):', '', '| Argument | Value |', '|---|---|']
    lines += [f'| `{k}` | `{json.dumps(v) if not isinstance(v, str) else v}` |' for k, v in recipe.items()]
    return '\n'.join(lines) + '\n'


def usage_source(repo_id: Optional[str] = None, local_dir: Optional[str] = None) -> str:
    """What the card's ``timm.create_model`` loads: ``hf-hub:ORG/NAME`` with a repo id, else ``local-dir:PATH``."""
    if repo_id:
        return f'hf-hub:{repo_id}'
    if local_dir:
        return f'local-dir:{os.path.abspath(os.fspath(local_dir))}'
    raise ValueError('A model card loads its own weights: give the Hub repository (repo_id) or the export folder.')


def _is_package_model(architecture: str) -> bool:
    """Whether ``architecture`` is registered by this package (then the card's code needs ``import timm_rspc``)."""
    import timm
    import timm_rspc  # noqa: F401  (registers RVT / FAN)
    try:
        entrypoint = timm.models.model_entrypoint(architecture)
    except RuntimeError:  # unknown to timm: only this package could have built it
        return True
    return getattr(entrypoint, '__module__', '').startswith('timm_rspc')


def _usage(source: str, package_model: bool) -> str:
    register = 'import timm_rspc  # registers the RVT and FAN architectures with timm\n' if package_model else ''
    moved = ('# loads this export folder; give its new path if you move it\n'
             if source.startswith('local-dir:') else '')
    return f"""### Image Classification
```python
import timm
{register}import torch
from PIL import Image

{moved}model = timm.create_model({source!r}, pretrained=True).eval()
transforms = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)

img = Image.open('image.jpg').convert('RGB')
with torch.no_grad():
    probabilities = model(transforms(img).unsqueeze(0)).softmax(dim=-1)
top5_probabilities, top5_class_indices = torch.topk(probabilities * 100, k=5)
```

### Image Embeddings
```python
model = timm.create_model({source!r}, pretrained=True, num_classes=0).eval()
with torch.no_grad():
    features = model.forward_features(transforms(img).unsqueeze(0))  # unpooled tokens / feature map
    embedding = model.forward_head(features, pre_logits=True)          # (1, num_features)
```
"""


def _datasets(name: str, train_args: Optional[Dict[str, Any]]) -> Tuple[Optional[str], Optional[str]]:
    """(dataset, pretrain dataset) from the tag (``in22k_ft_in1k``: fine-tuned on in1k after in22k) or the run."""
    parts = [_TAG_DATASETS[p] for p in name.partition('.')[2].split('_') if p in _TAG_DATASETS]
    if parts:
        return parts[-1], (parts[0] if len(parts) > 1 else None)
    dataset = (train_args or {}).get('dataset')
    if isinstance(dataset, str) and dataset:
        return dataset.rsplit('/', 1)[-1], None  # timm's 'torch/cifar10' -> 'cifar10'
    return None, None


def _license_fields(license: Optional[str], link: Optional[str]) -> Dict[str, str]:
    """Front matter license fields for a license id (a Hub id, or any other name with a link)."""
    if not license or license in _HUB_LICENSES:
        return {'license': license or 'apache-2.0'}
    fields = {'license': 'other', 'license_name': license}
    link = _LICENSE_LINKS.get(license, link)
    if link:
        fields['license_link'] = link
    return fields


def build_model_card(
        model: nn.Module,
        name: str,
        repo_id: Optional[str] = None,
        release=None,
        results: Optional[Dict[str, Any]] = None,
        train_args: Optional[Dict[str, Any]] = None,
        train_args_source: str = 'args.yaml',
        license: Optional[str] = None,
        weights_note: Optional[str] = None,
        stats: Optional[Dict[str, Any]] = None,
        local_dir: Optional[str] = None,
) -> str:
    """Render the model card of ``model``.

    Args:
        model: The model with its weights loaded (statistics are measured on it).
        name: The model's name on the card (``arch.tag`` for released weights, the repo name otherwise).
        repo_id: Hub repository the card will live in; the usage example loads ``hf-hub:`` it when given.
        local_dir: The export folder the card is written into; without ``repo_id`` the usage example loads
            ``local-dir:`` it (one of the two is required: the example always loads these weights).
        release: `ReleasedWeight` when the weights are an authors' release file: the paper's results and the
            release's origin and license are shown.
        results: Checked results JSON (`read_results`) of one's own evaluation.
        train_args: Training arguments (``args.yaml``); the recipe-relevant ones are listed.
        license: Hub license id for one's own weights (default ``apache-2.0``); released weights carry their
            release's terms.
        weights_note: One line on which weights these are (e.g. non-EMA weights of a file).
        stats: Precomputed `model_stats` (measured when not given).
    """
    source = usage_source(repo_id, local_dir)
    from timm.models._hub import generate_readme
    cfg = model.pretrained_cfg
    # Released weights are described under their canonical tag (an alias such as rvt_s_rspc maps to rvt_small_plus).
    architecture = release.name.partition('.')[0] if release is not None else (
        cfg.get('architecture') or name.partition('.')[0])
    backbone = _backbone(architecture)
    stats = stats or model_stats(model)
    dataset, pretrain_dataset = _datasets(release.name if release is not None else name, train_args)
    if release is not None:
        is_rspc = release.is_rspc
    else:  # one's own run: an RSPC tag name, or RSPC switched on in its training arguments
        run_args = train_args or {}
        is_rspc = 'rspc' in name.partition('.')[2] or bool(run_args.get('rspc') or run_args.get('use_rspc'))

    if backbone:
        kind = f'{backbone.article} {backbone.label} ({architecture}) image classification model'
    else:
        kind = f"{'An' if architecture[0] in 'aeiou' else 'A'} {architecture} image classification model"
    if release is not None and release.is_rspc:
        description = f'{kind} trained with RSPC (Reducing Sensitivity to Patch Corruptions) by the RSPC authors'
    elif release is not None:
        authors = f'the {backbone.label} authors' if backbone else 'its authors'
        description = f'{kind} trained by {authors}'
        if published_results(release.name):
            description += ' (a baseline of the RSPC paper)'
    else:
        description = kind + (' trained with RSPC' if is_rspc else '')
    description += f' on {dataset}.' if dataset else '.'
    if release is not None:
        description += f' Weights converted to safetensors from the release file `{release.filename}`.'
    if weights_note:
        description += f' {weights_note}'

    details: Dict[str, Any] = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': {
            'Params (M)': stats['params_m'],
            'GMACs': stats['gmacs'],
            'Image size': ' x '.join(str(s) for s in stats['input_size'][1:]),
        },
        'Papers': [f'{RSPC_PAPER}: {RSPC_CVF_URL}'] + ([f'{backbone.title}: {backbone.url}'] if backbone else []),
    }
    if dataset:
        details['Dataset'] = dataset
    if pretrain_dataset:
        details['Pretrain Dataset'] = pretrain_dataset
    if release is not None and cfg.get('origin_url'):
        details['Original'] = cfg['origin_url']

    columns: List[Tuple[Any, ...]] = []
    if results:
        columns.append(('This model (measured)', results['results'], results.get('images') or {}))
    paper = published_results(release.name) if release is not None else {}
    if paper:
        columns.append(('This model (paper)', paper))
    if columns:
        baseline = BASELINE_RESULTS.get(architecture)
        rspc = PAPER_RESULTS.get(f'{architecture}.rspc_in1k')
        if baseline and baseline != paper and is_rspc:
            columns.append((f'{architecture} baseline (paper)', baseline))
        elif rspc and rspc != paper and not is_rspc:
            columns.append((f'{architecture}.rspc_in1k (paper)', rspc))
    comparison = ''
    if columns:
        comparison = ('Top-1 accuracy and mean corruption / flip error in percent, one decimal; ↑ higher is better, '
                      '↓ lower is better. Measured values name the images they were measured on.\n\n'
                      + results_table(columns) + '\n')
        if any(len(column) == 2 for column in columns):
            comparison += (f'\nPaper numbers: {RSPC_PAPER} (Guo, Stutz, Schiele, CVPR 2023), on the full evaluation '
                           'sets (ImageNet-1k val: 50,000 images; ImageNet-A: 7,500; ImageNet-C: 15 corruptions x 5 '
                           'severities x 50,000; ImageNet-P: 10 perturbations; CIFAR: the 10,000 test images, and '
                           'CIFAR-C of each corruption and severity).\n')
        if results and results.get('source'):
            comparison += f"\nMeasured: {results['source']}.\n"

    card: Dict[str, Any] = {
        'tags': ['image-classification', 'timm', 'timm-rspc', 'robustness'],
        'description': description,
        'details': details,
        'usage': _usage(source, _is_package_model(cfg.get('architecture') or architecture)),
        'citation': [RSPC_CITATION] + ([backbone.bibtex] if backbone else []),
    }
    if comparison:
        card['comparison'] = comparison
    if release is not None:  # the release's terms, as its pretrained cfg states them
        card.update(_license_fields(cfg.get('license') or 'unknown', cfg.get('origin_url')))
    else:
        card.update(_license_fields(license or 'apache-2.0', None))
    if card.get('license_name') == 'unknown':
        description += ' The authors\' release states no license; ask them before reusing these weights.'
        card['description'] = description
    text = generate_readme(card, name)
    if train_args:
        recipe = training_recipe(train_args)
        if recipe:
            # timm's layout has no training section; it goes right before the citations.
            head, sep, tail = text.partition('\n## Citation\n')
            text = head + '\n' + _recipe_section(recipe, train_args_source) + sep + tail
    return text
