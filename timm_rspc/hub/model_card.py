"""Model cards (the Hub's ``README.md``) in timm's card layout, filled from what is known about the weights.

The layout is timm's own (`timm.models._hub.generate_readme`: front matter, Model Details, Model Usage, Model
Comparison, Citation); this module gathers the content:

* statistics measured on the model: parameters (M), GMACs (counted by `torch.utils.flop_counter.FlopCounterMode`
  on one image: matmuls, convolutions and attention; a multiply-add is one MAC), input size;
* results: the paper's table (`paper_results`) for released weights, and/or a results JSON for one's own run;
* the training recipe, from the run's ``args.yaml`` (or the arguments stored in the checkpoint);
* citations of RSPC and of the backbone paper, and the license.

Results JSON format (what a ``timm-rspc bench`` run writes; keys are `paper_results.METRICS` names, values in
percent, unknown keys are an error)::

    {"results": {"imagenet_top1": 80.1, "imagenet_c_mce": 55.2},
     "source": "timm-rspc bench, 2026-01-01"}          # optional, shown under the table
"""
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from timm_rspc.models.paper_results import (
    BASELINE_RESULTS, METRICS, PAPER_RESULTS, RSPC_CITATION, RSPC_CVF_URL, RSPC_PAPER,
)

__all__ = ['BackbonePaper', 'BACKBONE_PAPERS', 'model_stats', 'read_results', 'published_results', 'results_table',
           'training_recipe', 'read_args_yaml', 'build_model_card']


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
    from timm.models._input import get_model_input_config
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


def read_results(path: str) -> Dict[str, Any]:
    """Read and check a results JSON (``{"results": {metric: value}, "source"?: str}``); see the module doc."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON: {e}") from e
    results = data.get('results') if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise ValueError(f"'{path}' must hold {{\"results\": {{metric: value, ...}}}} with at least one metric.")
    unknown = sorted(set(results) - set(METRICS))
    if unknown:
        raise ValueError(f"'{path}' has unknown metrics {unknown}; known metrics: {', '.join(METRICS)}.")
    for key, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"'{path}': metric '{key}' must be a number (percent), got {value!r}.")
    return {'results': dict(results), 'source': data.get('source')}


def published_results(name: str) -> Dict[str, float]:
    """The paper's numbers for released weights ``arch.tag``: RSPC tags from its table, ``.in1k`` baselines too."""
    if name in PAPER_RESULTS:
        return dict(PAPER_RESULTS[name])
    arch, _, tag = name.partition('.')
    if tag == 'in1k' and arch in BASELINE_RESULTS:
        return dict(BASELINE_RESULTS[arch])
    return {}


def _format_value(value: Optional[float]) -> str:
    """Results as published: at least one decimal (57.0, not 57), more when the source has them (97.73)."""
    if value is None:
        return '-'
    text = f'{value:g}'
    return text if '.' in text or 'e' in text else f'{value:.1f}'


def results_table(columns: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    """Markdown table, one row per metric of the first column (in `METRICS` order), one column per results set."""
    if not columns:
        return ''
    rows = [k for k in METRICS if k in columns[0][1]]
    lines = ['| Metric | ' + ' | '.join(title for title, _ in columns) + ' |',
             '|---|' + '---:|' * len(columns)]
    for key in rows:
        label, higher_is_better = METRICS[key]
        arrow = '↑' if higher_is_better else '↓'
        values = ' | '.join(_format_value(results.get(key)) for _, results in columns)
        lines.append(f'| {label} ({arrow}) | {values} |')
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


def _usage(model_id: str, is_hub: bool) -> str:
    source = f"'hf-hub:{model_id}'" if is_hub else f"'{model_id}'"
    return f"""### Image Classification
```python
import timm
import timm_rspc  # registers the RVT and FAN architectures with timm
import torch
from PIL import Image

model = timm.create_model({source}, pretrained=True).eval()
transforms = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)

img = Image.open('image.jpg').convert('RGB')
with torch.no_grad():
    probabilities = model(transforms(img).unsqueeze(0)).softmax(dim=-1)
top5_probabilities, top5_class_indices = torch.topk(probabilities * 100, k=5)
```

### Image Embeddings
```python
model = timm.create_model({source}, pretrained=True, num_classes=0).eval()
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
) -> str:
    """Render the model card of ``model``.

    Args:
        model: The model with its weights loaded (statistics are measured on it).
        name: The model's name on the card (``arch.tag`` for released weights, the repo name otherwise).
        repo_id: Hub repository the card will live in; the usage example loads from it when given.
        release: `ReleasedWeight` when the weights are an authors' release file: the paper's results and the
            release's origin and license are shown.
        results: Checked results JSON (`read_results`) of one's own evaluation.
        train_args: Training arguments (``args.yaml``); the recipe-relevant ones are listed.
        license: Hub license id for one's own weights (default ``apache-2.0``); released weights carry their
            release's terms.
        weights_note: One line on which weights these are (e.g. non-EMA weights of a file).
        stats: Precomputed `model_stats` (measured when not given).
    """
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

    columns: List[Tuple[str, Dict[str, float]]] = []
    if results:
        columns.append(('This model (measured)', results['results']))
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
        comparison = ('Top-1 accuracy and mean corruption / flip error in percent; ↑ higher is better, '
                      '↓ lower is better.\n\n' + results_table(columns) + '\n')
        if paper:
            comparison += f'\nPaper numbers: {RSPC_PAPER} (Guo, Stutz, Schiele, CVPR 2023).\n'
        if results and results.get('source'):
            comparison += f"\nMeasured: {results['source']}.\n"

    card: Dict[str, Any] = {
        'tags': ['image-classification', 'timm', 'timm-rspc', 'robustness'],
        'description': description,
        'details': details,
        'usage': _usage(repo_id or name, is_hub=repo_id is not None),
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
