"""How much each attention layer's maps change when some patches of the image are corrupted.

The paper explains RSPC's robustness by more stable attention: a few noise patches redirect a plain ViT's attention,
while an RSPC model's attention stays put. Per attention layer and per model this module measures, between the clean
and the corrupted image (the same fixed patch masks as the sensitivity analysis, filled with RSPC's uniform noise):

- ``js``: the Jensen-Shannon divergence (natural log, in [0, ln 2]) between the clean and the corrupted attention row
  of every query, averaged over heads, queries and images. Jensen-Shannon rather than Kullback-Leibler because it is
  symmetric and bounded: a softmax row can underflow to exact zeros in float32, where KL becomes infinite and one
  peaked row would dominate a layer's mean; JS stays finite, so layers and models compare on one scale.
- ``cosine``: the cosine similarity of the same two rows (1 = unchanged), averaged the same way.
- ``js_corrupted_rows`` / ``cosine_corrupted_rows``: the same, over the queries at corrupted patches only (how the
  corrupted tokens themselves attend).
- ``attention_to_corrupted_clean`` / ``attention_to_corrupted``: the attention mass every query gives to the
  corrupted patches' columns, averaged over heads, queries and images, on the clean and on the corrupted image (how
  much attention the noise draws). Restricted to some columns a row is no distribution, so the mass is what is
  compared there.

Prefix tokens (class, register, distillation tokens) are rows and columns like any other in ``js`` / ``cosine`` and
never count as corrupted. Layers whose tokens form a coarser grid (a pooled stage) mark a token corrupted when any
patch under it is. Maps come from timm's `AttentionExtract` with timm's fused attention switched off; statistics are
summed per batch in float64 (`attention_change_sums`, a pure function) and divided at the end, so memory does not
grow with the number of images.
"""
import contextlib
import io
import warnings
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_rspc.kernels import register_reference, use_kernels

from .masks import FixedPatchMasks, num_occluded
from .perturbations import NoiseOcclusion, batch_generator, occlude_with_noise, shared_patch_grid
from .pixel_model import PixelModel

__all__ = [
    'STATISTICS', 'attention_change_sums', 'AttentionStability', 'unfused_attention', 'attention_extractor',
    'token_corruption_mask', 'evaluate_attention_stability', 'query_attention_maps',
]

STATISTICS = ('js', 'cosine', 'js_corrupted_rows', 'cosine_corrupted_rows', 'attention_to_corrupted_clean',
              'attention_to_corrupted')
_COUNTS = {'js': 'rows', 'cosine': 'rows', 'js_corrupted_rows': 'corrupted_rows',
           'cosine_corrupted_rows': 'corrupted_rows', 'attention_to_corrupted_clean': 'rows',
           'attention_to_corrupted': 'rows'}


def attention_change_sums(
        clean: torch.Tensor, corrupted: torch.Tensor, corrupted_keys: torch.Tensor, corrupted_queries: torch.Tensor,
) -> Dict[str, torch.Tensor]:
    """Per-batch sums of the attention-change statistics (float64 0-dim tensors, no host sync).

    Args:
        clean, corrupted: attention probabilities (B, heads, Q, K) of the clean and the corrupted images.
        corrupted_keys: (B, K) bool, the corrupted tokens among the keys.
        corrupted_queries: (B, Q) bool, the corrupted tokens among the queries.

    Returns the sums behind every entry of `STATISTICS` plus the counts ``rows`` (B * heads * Q) and
    ``corrupted_rows``; each mean is a sum divided by its count (see `AttentionStability`).
    """
    if clean.shape != corrupted.shape or clean.ndim != 4:
        raise ValueError(f'Expected two attention maps shaped (batch, heads, queries, keys), got '
                         f'{tuple(clean.shape)} and {tuple(corrupted.shape)}.')
    if use_kernels(clean, 'attention_change'):  # CUDA + Triton: one pass per attention row, nothing map-sized
        from timm_rspc.kernels.attention_change import fused_attention_change_sums
        return fused_attention_change_sums(clean, corrupted, corrupted_keys, corrupted_queries)
    p, q = clean.float(), corrupted.float()
    m = 0.5 * (p + q)
    js = 0.5 * (torch.xlogy(p, p) - torch.xlogy(p, m) + torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)
    js = js.clamp(min=0)  # rounding can leave -1e-9 where rows barely differ; identical rows give exactly 0
    cosine = F.cosine_similarity(p, q, dim=-1)
    key_weight = corrupted_keys[:, None, None, :].to(p.dtype)
    row_weight = corrupted_queries[:, None, :].expand_as(js).to(torch.float64)
    as64 = lambda t: t.to(torch.float64)  # noqa: E731
    return {
        'rows': torch.tensor(float(js.numel()), dtype=torch.float64, device=js.device),
        'corrupted_rows': row_weight.sum(),
        'js': as64(js).sum(),
        'cosine': as64(cosine).sum(),
        'js_corrupted_rows': (as64(js) * row_weight).sum(),
        'cosine_corrupted_rows': (as64(cosine) * row_weight).sum(),
        'attention_to_corrupted_clean': as64((p * key_weight).sum(-1)).sum(),
        'attention_to_corrupted': as64((q * key_weight).sum(-1)).sum(),
    }


# The kernel's self-check and fallback compare with / run this function (the kernels layer imports nothing above it).
register_reference('attention_change', attention_change_sums=attention_change_sums)


class AttentionStability:
    """Running sums of `attention_change_sums` per layer; `means()` divides them (NaN where a count is 0)."""

    def __init__(self):
        self.sums: Dict[str, Dict[str, torch.Tensor]] = {}

    def update(self, layer: str, sums: Dict[str, torch.Tensor]) -> None:
        totals = self.sums.setdefault(layer, {})
        for key, value in sums.items():
            totals[key] = totals[key] + value if key in totals else value.clone()

    def means(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for layer, totals in self.sums.items():
            out[layer] = {stat: (totals[stat] / totals[_COUNTS[stat]]).item() if totals[_COUNTS[stat]] > 0
                          else float('nan') for stat in STATISTICS}
            out[layer]['rows'] = int(totals['rows'].item())
            out[layer]['corrupted_rows'] = int(totals['corrupted_rows'].item())
        return out


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every module's ``fused_attn`` flag off (timm's explicit softmax path, which exposes the attention
    probabilities), restoring the flags on exit. Models built after ``timm.layers.set_fused_attn(False)`` need none."""
    flags = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, 'fused_attn', None), bool)]
    try:
        for m, _ in flags:
            m.fused_attn = False
        yield model
    finally:
        for m, flag in flags:
            m.fused_attn = flag


@contextlib.contextmanager
def attention_extractor(model: PixelModel, names: Optional[Sequence[str]] = None, method: str = 'fx'):
    """timm's `AttentionExtract` on the model, fused attention off; yields ``pixels -> {layer: (B, H, Q, K)}``.

    ``names`` are AttentionExtract's patterns (default: graph nodes ``*attn.softmax`` for ``fx``, modules
    ``*attn_drop`` for ``hook``). Hooks installed by the ``hook`` method are removed on exit.
    """
    from timm.utils import AttentionExtract
    with unfused_attention(model.model):
        try:
            with warnings.catch_warnings():
                # torchvision's advice that eval-mode graphs may lack train-mode nodes: the maps are read in eval mode
                warnings.filterwarnings('ignore', message='NOTE: The nodes obtained by tracing the model in eval mode')
                extract = AttentionExtract(model.model, names=list(names) if names else None, method=method)
        except RuntimeError as e:
            raise ValueError(f'{type(model.model).__name__}: {e} List the attention nodes / modules with '
                             f'--attention-layers, or try --attention-method hook.') from None
        def run(pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # fx prints its own traceback before raising
                    return extract(model.normalize(pixels))
            except (RuntimeError, AttributeError, TypeError) as e:  # fx graphs of data-dependent forwards (Hiera)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(
                    f"{type(model.model).__name__}: timm's AttentionExtract ({method}) cannot run this model "
                    f"({reason}); try --attention-method {'hook' if method == 'fx' else 'fx'}.") from e

        try:
            yield run
        finally:
            hooks = getattr(extract, 'hooks', None)
            for handle in getattr(hooks, '_handles', ()):  # FeatureHooks keeps its handles but has no remove()
                handle.remove()


def token_corruption_mask(
        corrupted_patches: torch.Tensor, grid_size: Tuple[int, int], num_tokens: int, prefix_options: Sequence[int],
) -> Optional[Tuple[torch.Tensor, int]]:
    """Which of a layer's ``num_tokens`` tokens are corrupted: ``((B, num_tokens) bool, num_prefix)`` or None.

    Tokens are ``num_prefix`` prefix tokens followed by a row-major grid of patch tokens: the patch grid itself, one
    pooled by an integer factor (a pooled stage, PVT's spatially reduced keys: a token is corrupted when any patch
    under it is), or one finer by an integer factor (the 4 px tokens of Swin's, PVT's or MViT's early stages under
    16 px patches: a token is corrupted when the patch it lies in is). The first prefix count in ``prefix_options``
    that makes the numbers fit wins; None when none does (not a token-attention map).
    """
    gh, gw = grid_size
    grid = corrupted_patches.float().reshape(-1, 1, gh, gw)
    for prefix in prefix_options:
        tokens = num_tokens - prefix
        if tokens <= 0:
            continue
        for factor in (1, 2, 4, 8):
            if not (gh % factor or gw % factor) and (gh // factor) * (gw // factor) == tokens:
                mapped = F.max_pool2d(grid, factor) if factor > 1 else grid
            elif factor > 1 and gh * gw * factor * factor == tokens:
                mapped = F.interpolate(grid, scale_factor=factor, mode='nearest')
            else:
                continue
            prefix_part = torch.zeros(grid.shape[0], prefix, dtype=torch.bool, device=grid.device)
            return torch.cat([prefix_part, mapped.flatten(1) > 0], dim=1), prefix
    return None


def _prefix_options(model: PixelModel) -> List[int]:
    """Prefix-token counts to try: the model's ``num_prefix_tokens``, then none (blocks that see patch tokens only,
    as FAN's), then one (a class token the model does not declare, as in FAN's class-attention blocks)."""
    prefix = int(getattr(model.model, 'num_prefix_tokens', 0) or 0)
    return list(dict.fromkeys([prefix, 0, 1]))


def _shifted_window_layout(model: nn.Module, layer: str) -> Optional[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """``(window_size, shift_size)`` of the Swin-style block that owns attention layer ``layer`` (a block that rolls
    its token grid by ``-shift_size``, pads it to whole windows and partitions it row-major, as timm's Swin and
    Swin V2 do), else None."""
    modules = dict(model.named_modules())
    parts = layer.split('.')
    for end in range(len(parts) - 1, 0, -1):
        block = modules.get('.'.join(parts[:end]))
        if block is not None and hasattr(block, 'window_size') and hasattr(block, 'shift_size'):
            window, shift = block.window_size, block.shift_size
            window = (window, window) if isinstance(window, int) else tuple(window)
            shift = (shift, shift) if isinstance(shift, int) else tuple(shift)
            return (int(window[0]), int(window[1])), (int(shift[0]), int(shift[1]))
    return None


def _windowed_token_mask(corrupted: torch.Tensor, grid: Tuple[int, int], num_windows: int,
                         window: Tuple[int, int], shift: Tuple[int, int]) -> Optional[torch.Tensor]:
    """The corrupted tokens of each window, ``(B * windows, window area)`` bool, in the order of the block's own
    windows: the token mask on the image grid rolled by ``-shift``, padded to whole windows and partitioned like the
    block's features. The token grid is the patch grid or one an integer factor finer or coarser, whichever gives the
    block's number of windows; None when none does."""
    batch, (gh, gw) = corrupted.shape[0], grid
    sizes = [(gh * f, gw * f) for f in (1, 2, 4, 8)] + [(gh // f, gw // f) for f in (2, 4, 8) if not (gh % f or gw % f)]
    for height, width in sizes:
        padded_h, padded_w = -(-height // window[0]) * window[0], -(-width // window[1]) * window[1]
        if batch * (padded_h // window[0]) * (padded_w // window[1]) != num_windows:
            continue
        tokens = token_corruption_mask(corrupted, grid, height * width, [0])[0].reshape(batch, height, width)
        if any(shift):
            tokens = torch.roll(tokens, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        tokens = F.pad(tokens, (0, padded_w - width, 0, padded_h - height))
        windows = tokens.reshape(batch, padded_h // window[0], window[0], padded_w // window[1], window[1])
        return windows.permute(0, 1, 3, 2, 4).reshape(num_windows, window[0] * window[1])
    return None


def _layer_token_masks(
        attention: torch.Tensor, corrupted_patches: torch.Tensor, grid: Tuple[int, int], prefix_options: Sequence[int],
        window_layout: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None,
) -> Tuple[Optional[str], Optional[Tuple[torch.Tensor, torch.Tensor]]]:
    """``(None, (corrupted keys, corrupted queries))`` for a map that is token attention over the image, else
    ``(why it cannot be mapped, None)``. Maps with another batch size are per window: with the owning block's
    ``window_layout`` (Swin's shifted windows) each window's tokens are mapped back to image patches; without one
    (MaxViT's grid and window partitions, Hiera's mask units) the map carries no image position and is skipped."""
    if attention.ndim != 4:
        return f'output shaped {tuple(attention.shape)}, not (B, heads, Q, K)', None
    if attention.shape[0] != corrupted_patches.shape[0]:
        windows = None
        if window_layout is not None and attention.shape[-1] == attention.shape[-2] == \
                window_layout[0][0] * window_layout[0][1] and attention.shape[0] % corrupted_patches.shape[0] == 0:
            windows = _windowed_token_mask(corrupted_patches, grid, attention.shape[0], *window_layout)
        if windows is None:
            return (f'windowed attention: keys are window-local, not mapped to image patches ({attention.shape[0]} '
                    f'maps for {corrupted_patches.shape[0]} images)'), None
        return None, (windows, windows)
    keys = token_corruption_mask(corrupted_patches, grid, attention.shape[-1], prefix_options)
    queries = token_corruption_mask(corrupted_patches, grid, attention.shape[-2], prefix_options)
    if keys is None or queries is None:
        which = 'keys' if keys is None else 'queries'
        count = attention.shape[-1] if keys is None else attention.shape[-2]
        return f'{count} {which} do not form the {grid[0]}x{grid[1]} patch grid (or a multiple of it)', None
    return None, (keys[0], queries[0])


def evaluate_attention_stability(
        models: Dict[str, PixelModel], batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], ratio: float = 0.1,
        seed: int = 0, names: Optional[Sequence[str]] = None, method: str = 'fx',
) -> Dict:
    """Per-layer attention change (see the module docstring) of each model, clean vs noise in fixed random patches.

    ``batches`` yields ``(pixels in [0, 1], targets)`` (targets unused); every model sees the same corrupted images.
    Returns a JSON-able dict: settings and, per model, a list of layers with their statistics, plus the layers
    whose maps are not token attention (skipped).
    """
    grid = shared_patch_grid(models)
    masks = FixedPatchMasks(grid, ratio, seed)
    stats = {name: AttentionStability() for name in models}
    skipped: Dict[str, Dict[str, str]] = {name: {} for name in models}
    layouts: Dict[str, Dict[str, Optional[Tuple]]] = {name: {} for name in models}  # per layer, found once
    seen = 0
    with contextlib.ExitStack() as stack:
        extractors = {name: stack.enter_context(attention_extractor(model, names, method))
                      for name, model in models.items()}
        for batch_index, (pixels, _) in enumerate(batches):
            count = pixels.shape[0]
            keep = masks.rows(seen, seen + count)
            seen += count
            for name, model in models.items():
                device = model.mean.device
                x, batch_keep = pixels.to(device), keep.to(device)
                noise = batch_generator(NoiseOcclusion.name, seed, batch_index, device)
                corrupted = occlude_with_noise(x, batch_keep, noise)
                with torch.inference_mode():
                    clean_maps = extractors[name](x)
                    corrupted_maps = extractors[name](corrupted)
                for layer, clean in clean_maps.items():
                    if layer not in layouts[name]:
                        layouts[name][layer] = _shifted_window_layout(model.model, layer)
                    problem, masks_ = _layer_token_masks(clean, batch_keep == 0, grid, _prefix_options(model),
                                                         layouts[name][layer])
                    if problem is not None:
                        skipped[name][layer] = problem
                        continue
                    stats[name].update(layer, attention_change_sums(clean, corrupted_maps[layer], *masks_))
    if seen == 0:
        raise ValueError('The data source yielded no images.')
    for name in models:
        if not stats[name].sums and not skipped[name]:
            raise ValueError(
                f'{name}: the matched attention layers produced no maps in the forward pass (they exist but do not '
                f'run, as in models with factorised or fused attention); list other ones with --attention-layers.')
    return {
        'analysis': 'attention_stability',
        'measure': 'Jensen-Shannon divergence (nats) and cosine similarity of attention rows, clean vs corrupted',
        'corruption': 'uniform [0, 1) pixel noise in fixed random patches (RSPC corruption)',
        'num_images': seen, 'ratio': ratio, 'patches_per_image': num_occluded(grid, ratio),
        'num_patches': grid[0] * grid[1], 'seed': seed,
        'models': {
            name: {'layers': [dict(name=layer, **values) for layer, values in stats[name].means().items()],
                   'skipped_layers': skipped[name]}
            for name in models},
    }


def query_attention_maps(
        models: Dict[str, PixelModel], pixels: torch.Tensor, keep: torch.Tensor, layer: Optional[str] = None,
        query_patch: Optional[int] = None, seed: int = 0, names: Optional[Sequence[str]] = None, method: str = 'fx',
) -> Dict:
    """For the image grid: the attention of one query patch over the patch grid, head-averaged, for a few images.

    ``layer`` defaults to each model's last token-attention layer with more than one patch token; ``query_patch``
    (row-major index) to the centre patch. Returns ``{'clean': pixels, 'corrupted': pixels, 'keep': keep, 'query_patch': int, 'grid': (gh, gw),
    'models': {name: {'layer': str, 'clean': (B, gh', gw'), 'corrupted': (B, gh', gw')}}}`` (CPU tensors).
    """
    grid = shared_patch_grid(models)
    query_patch = grid[0] // 2 * grid[1] + grid[1] // 2 if query_patch is None else int(query_patch)
    if not 0 <= query_patch < grid[0] * grid[1]:
        raise ValueError(f'The query patch must be a patch index in 0..{grid[0] * grid[1] - 1}, got {query_patch}.')
    out = {'query_patch': query_patch, 'grid': grid, 'keep': keep.cpu(), 'models': {}}
    for name, model in models.items():
        device = model.mean.device
        x, batch_keep = pixels.to(device), keep.to(device)
        corrupted = occlude_with_noise(x, batch_keep, batch_generator(NoiseOcclusion.name, seed, 0, device))
        out['clean'], out['corrupted'] = x.cpu(), corrupted.cpu()
        with attention_extractor(model, names, method) as extract, torch.inference_mode():
            clean_maps, corrupted_maps = extract(x), extract(corrupted)
        usable = {}
        for name_, attn in clean_maps.items():
            found = attn.ndim == 4 and attn.shape[0] == x.shape[0] and attn.shape[-2] == attn.shape[-1] and \
                token_corruption_mask(batch_keep == 0, grid, attn.shape[-1], _prefix_options(model))
            if found:
                usable[name_] = found[1]
        if not usable:
            raise ValueError(f'{name}: no token self-attention layer found among {list(clean_maps)}.')
        # default: the last layer with more than one patch token (a fully pooled stage shows one cell)
        spread = [n for n, prefix in usable.items() if clean_maps[n].shape[-1] - prefix > 1]
        chosen = layer if layer is not None else (spread or list(usable))[-1]
        if chosen not in usable:
            raise ValueError(f'{name}: unknown attention layer {chosen!r}; choose one of {", ".join(usable)}.')
        prefix = usable[chosen]
        tokens = clean_maps[chosen].shape[-1] - prefix
        row, col = divmod(query_patch, grid[1])
        if tokens >= grid[0] * grid[1]:  # finer tokens: the one at the query patch's centre
            finer = int(round((tokens / (grid[0] * grid[1])) ** 0.5))
            layer_grid = (grid[0] * finer, grid[1] * finer)
            query = prefix + (row * finer + finer // 2) * layer_grid[1] + col * finer + finer // 2
        else:
            factor = int(round((grid[0] * grid[1] / tokens) ** 0.5))
            layer_grid = (grid[0] // factor, grid[1] // factor)
            query = prefix + (row // factor) * layer_grid[1] + col // factor

        def patch_attention(maps):
            return maps[chosen][:, :, query, prefix:].mean(1).reshape(-1, *layer_grid).float().cpu()
        out['models'][name] = {'layer': chosen, 'clean': patch_attention(clean_maps),
                               'corrupted': patch_attention(corrupted_maps)}
    return out
