"""Sensitivity to patch perturbations: top-1 accuracy and true-class confidence, clean and with some patches perturbed.

The paper's motivating study, for any timm model: a fixed random fraction of each image's patches (10% by default,
the same patches for every perturbation and every model, see `masks`) is perturbed, and the drop of top-1 accuracy
and of the mean softmax probability of the true class is reported per perturbation. Perturbations that draw random
numbers use a generator seeded per (perturbation, seed, batch), so every model sees the same noise.
"""
import dataclasses
from typing import Dict, Iterable, List, Sequence, Tuple

import torch

from .masks import FixedPatchMasks, num_occluded
from .perturbations import batch_generator, shared_patch_grid
from .pixel_model import PixelModel

__all__ = ['evaluate_sensitivity', 'perturbation_settings', 'sensitivity_rows']


def perturbation_settings(perturbation) -> Dict:
    """The JSON-able settings of a perturbation (tensors such as the attacker's fit images left out)."""
    values = {'name': perturbation.name}
    if dataclasses.is_dataclass(perturbation):
        values.update((f.name, getattr(perturbation, f.name)) for f in dataclasses.fields(perturbation))
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))}


def _scores(correct: torch.Tensor, confidence: torch.Tensor, count: int) -> Dict[str, float]:
    return {'accuracy': 100. * correct.item() / count, 'confidence': 100. * confidence.item() / count}


def evaluate_sensitivity(
        models: Dict[str, PixelModel], batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], perturbations: Sequence,
        ratio: float = 0.1, seed: int = 0,
) -> Dict:
    """Clean and perturbed top-1 accuracy and mean true-class confidence (percent) of each model, and the drops.

    ``batches`` yields ``(pixels in [0, 1], targets)``; perturbations are those of `perturbations` (or anything with
    ``name`` and ``bind(model)``). Returns a JSON-able dict: settings, and per model ``clean`` and ``perturbed``
    (per perturbation: accuracy, confidence, accuracy_drop, confidence_drop; the worst-case attacker's fit).
    """
    names = [p.name for p in perturbations]
    if len(set(names)) != len(names):
        raise ValueError(f'Perturbation names must be distinct, got {names}.')
    grid = shared_patch_grid(models)
    masks = FixedPatchMasks(grid, ratio, seed)
    bound, fits = {}, {}
    for model_name, model in models.items():
        model.eval()
        bound[model_name] = []
        for p in perturbations:
            bound[model_name].append(p.bind(model))
            if getattr(p, 'fit_history', None) is not None:
                fits[(model_name, p.name)] = p.fit_history
    conditions = ['clean'] + names
    totals = {m: {c: [torch.zeros((), dtype=torch.float64, device=model.mean.device) for _ in range(2)]
                  for c in conditions} for m, model in models.items()}
    seen = 0

    def add(model_name, condition, logits, targets):
        correct, confidence = totals[model_name][condition]
        correct += (logits.argmax(-1) == targets).sum()
        confidence += logits.float().softmax(-1).gather(1, targets[:, None]).sum()

    for batch_index, (pixels, targets) in enumerate(batches):
        keep = masks.rows(seen, seen + pixels.shape[0])
        seen += pixels.shape[0]
        for model_name, model in models.items():
            device = model.mean.device
            x, y, batch_keep = pixels.to(device), targets.to(device), keep.to(device)
            with torch.inference_mode():
                add(model_name, 'clean', model(x), y)
            for p, perturb in zip(perturbations, bound[model_name]):
                name = p.name
                generator = batch_generator(getattr(p, 'noise_stream', name), seed, batch_index, device)
                perturbed = perturb(x, y, batch_keep, generator)
                with torch.inference_mode():
                    add(model_name, name, model(perturbed), y)
    if seen == 0:
        raise ValueError('The data source yielded no images.')

    results = {}
    for model_name in models:
        clean = _scores(*totals[model_name]['clean'], seen)
        perturbed = {}
        for name in names:
            scores = _scores(*totals[model_name][name], seen)
            scores.update(accuracy_drop=clean['accuracy'] - scores['accuracy'],
                          confidence_drop=clean['confidence'] - scores['confidence'])
            if (model_name, name) in fits:
                scores['attacker'] = fits[(model_name, name)]
            perturbed[name] = scores
        results[model_name] = {'clean': clean, 'perturbed': perturbed}
    return {
        'analysis': 'sensitivity',
        'num_images': seen, 'ratio': ratio, 'patches_per_image': num_occluded(grid, ratio),
        'num_patches': grid[0] * grid[1], 'seed': seed,
        'perturbations': [perturbation_settings(p) for p in perturbations],
        'models': results,
    }


def sensitivity_rows(result: Dict) -> List[Dict]:
    """One row per model and condition (clean first), for the CSV and the terminal table."""
    rows = []
    for model_name, res in result['models'].items():
        rows.append(dict(model=model_name, perturbation='clean', **res['clean'], accuracy_drop=0., confidence_drop=0.))
        for name, scores in res['perturbed'].items():
            rows.append(dict(model=model_name, perturbation=name,
                             **{k: scores[k] for k in ('accuracy', 'confidence', 'accuracy_drop', 'confidence_drop')}))
    return rows
