"""Finding the blocks and the patch grid of any timm model, and hooking the blocks to measure feature alignment.

RSPC aligns the features of corrupted and clean images at every block. The authors hard-wired this into their RVT and
FAN block classes; here forward hooks do it for any model from outside, without touching model code:

* `find_blocks` lists a model's blocks by one rule over the names timm gives them: the items of every ``nn.Sequential``
  / ``nn.ModuleList`` named ``blocks`` (ViT, DeiT, FAN, Hiera, EfficientNet), ``<...>.blocks`` (Swin's
  ``layers.<i>.blocks``, PVT's, ConvNeXt's and MaxViT's ``stages.<i>.blocks``, PiT's ``transformers.<i>.blocks``),
  ``<word>_blocks<i>`` (CoaT's ``serial_blocks1`` ... and ``parallel_blocks``) or ``layer<i>`` (ResNet), descending
  through nested plain containers (Twins' per-stage lists, EfficientNet's stages) to the modules that run. Modules
  without parameters (EfficientFormer's ``Flat``), modules inside the patch embedding or stem (FAN-Hybrid's ConvNeXt
  stem) and modules nested in another block (CrossViT's branch blocks) are not blocks. Class-attention blocks
  (FAN's ``cls_attn_blocks``, CaiT's ``blocks_token_only``) do not match: they update the class token only.
* `select_blocks` narrows that list by index / slice, or picks modules by name pattern.
* `PairedBlockDistance` hooks the chosen blocks for one paired forward pass on ``cat([corrupted, clean])`` only, and
  reduces each block's output to one distance after it; no block's features are kept beyond what autograd keeps
  anyway. A block returning several feature tensors (CrossViT's two branches, CoaT's parallel scales, MViT's
  ``(x, size)``) counts once, with the mean of its tensors' distances.
* `find_patch_grid` finds the input size and the patch size of the corruption model: the backbone's own patch size
  where its tokens are non-overlapping image patches of at least `MIN_TOKEN_PATCH_SIZE` px (ViT, DeiT, BEiT, EVA,
  RVT, FAN: the authors' setting), else the paper's `DEFAULT_PATCH_SIZE` (16 px; Swin's 4 px tokens or PVT's
  overlapping 7 px embeddings would make C corrupt specks, not patches).
"""
import fnmatch
import re
from functools import partial
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils import unwrap_model
from torch.utils.hooks import RemovableHandle

from .alignment import mean_over_blocks, paired_mse

__all__ = [
    'BlockSpec', 'find_blocks', 'select_blocks', 'parse_block_spec', 'find_patch_grid', 'token_patch_size',
    'PairedBlockDistance', 'AlignmentRecording', 'DEFAULT_PATCH_SIZE', 'MIN_TOKEN_PATCH_SIZE',
]

BlockSpec = Union[None, int, str, slice, Sequence[Union[int, str, slice]]]

DEFAULT_PATCH_SIZE = 16  # the paper's patch size, C's patches for backbones without image-patch tokens
MIN_TOKEN_PATCH_SIZE = 8  # smaller tokens (Swin's 4 px) make C corrupt specks: C then uses DEFAULT_PATCH_SIZE

# The last name component of a container whose items are blocks (see the module docstring). FAN's
# ``cls_attn_blocks`` and CaiT's ``blocks_token_only`` do not match.
_BLOCK_CONTAINER = re.compile(r'(?:[a-z]+_)?blocks\d*|layer\d+')
_STEM_PREFIXES = ('patch_embed.', 'stem.')
_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _outermost(names: Sequence[str]) -> List[str]:
    """Drop names nested inside another name of the list (``blocks.0.attn`` when ``blocks.0`` is there)."""
    chosen = set(names)
    return [n for n in names if not any(n.rsplit('.', k)[0] in chosen for k in range(1, n.count('.') + 1))]


def _items(prefix: str, container: nn.Module) -> Iterator[str]:
    """The blocks held by a container: its numbered items, nested plain containers opened, parameter-free ones
    dropped (a container of named layers, like GCViT's feature extractor ``global_block.blocks``, holds none)."""
    for name, child in container.named_children():
        if not name.isdigit():
            continue
        if type(child) in _PLAIN_CONTAINERS:  # exact type: a block class may subclass nn.Sequential
            yield from _items(f'{prefix}{name}.', child)
        elif next(child.parameters(), None) is not None:
            yield prefix + name


def find_blocks(model: nn.Module) -> List[str]:
    """Names of the model's blocks in ``named_modules`` order (see the module docstring for the rule).

    Raises ValueError naming the model, what was looked for and, where timm's ``feature_info`` names the model's
    stages, the ``--rspc-blocks`` value that selects their blocks.
    """
    model = unwrap_model(model)
    names = []
    for name, module in model.named_modules():
        if (isinstance(module, _PLAIN_CONTAINERS) and _BLOCK_CONTAINER.fullmatch(name.rsplit('.', 1)[-1])
                and not (name + '.').startswith(_STEM_PREFIXES)):
            names.extend(_items(name + '.', module))
    names = _outermost(list(dict.fromkeys(names)))
    if not names:
        raise ValueError(
            f"Could not find the blocks of {type(model).__name__}: no nn.Sequential / nn.ModuleList named 'blocks', "
            f"'<word>_blocks<i>' or 'layer<i>' outside the stem. {_block_pattern_hint(model)}")
    return names


def _block_pattern_hint(model: nn.Module) -> str:
    """A ``--rspc-blocks`` value for a model the rule does not cover: the blocks of the stages timm's
    ``feature_info`` names (RegNet's ``s1`` ... ``s4``), or a pointer to the module names."""
    stages = [info.get('module') for info in getattr(model, 'feature_info', None) or [] if isinstance(info, dict)]
    modules = dict(model.named_modules())
    stages = [s for s in stages if s and not s.startswith(('stem', 'patch_embed'))
              and any(next(c.parameters(), None) is not None for c in modules[s].children())]
    if stages:
        spec = ','.join(f'{s}.*' for s in stages)
        return f"Select its stages' blocks by name pattern: --rspc-blocks '{spec}' (blocks='{spec}')."
    top = [n for n in modules if n and '.' not in n]
    nested = [n for n in top if next(modules[n].children(), None) is not None]
    example = f", e.g. '{nested[0]}.*'" if nested else ''
    return (f"Select the modules to align by name pattern (--rspc-blocks / blocks={example}); its top-level modules "
            f"are {', '.join(top)}.")


def parse_block_spec(text: Optional[str]) -> BlockSpec:
    """Parse a command-line block selection: comma-separated indices (``-1``), slices (``8:``) or name patterns.

    ``None`` or ``''`` or ``'all'`` select every block.
    """
    if text is None or text.strip() in ('', 'all'):
        return None
    items: List[Union[int, str, slice]] = []
    for item in (part.strip() for part in text.split(',')):
        if not item:
            continue
        if re.fullmatch(r'-?\d+', item):
            items.append(int(item))
        elif re.fullmatch(r'-?\d*:-?\d*', item):
            start, stop = (int(v) if v else None for v in item.split(':'))
            items.append(slice(start, stop))
        else:
            items.append(item)
    return items


def select_blocks(model: nn.Module, blocks: BlockSpec = None) -> List[str]:
    """Resolve a block selection to module names, in model order, without duplicates.

    ``blocks``: None (all of `find_blocks`), or one or a list of: an int index or a slice into `find_blocks`'s list, or
    a name pattern (``fnmatch`` style, e.g. ``'blocks.1?'`` or Swin's ``'layers.2.blocks.*'``) matched against every
    module name, keeping the outermost matches; a matched plain container stands for its blocks. A string with commas is parsed by `parse_block_spec`. An index out of
    range or a pattern matching nothing raises ValueError listing what is available.
    """
    if isinstance(blocks, str):
        blocks = parse_block_spec(blocks)
    if blocks is None:
        return find_blocks(model)
    if isinstance(blocks, (int, slice)):
        blocks = [blocks]
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    module_names = [name for name in modules if name]
    default: Optional[List[str]] = None
    chosen = set()
    for item in blocks:
        if isinstance(item, (int, slice)):
            if default is None:
                default = find_blocks(model)
            if isinstance(item, int):
                if not -len(default) <= item < len(default):
                    raise ValueError(
                        f'Block index {item} is out of range: {type(model).__name__} has {len(default)} blocks '
                        f'({_preview(default)}).')
                chosen.add(default[item])
            else:
                picked = default[item]
                if not picked:
                    raise ValueError(
                        f'Block slice {_slice_text(item)} selects none of the {len(default)} blocks of '
                        f'{type(model).__name__} ({_preview(default)}).')
                chosen.update(picked)
        elif isinstance(item, str):
            matched = [name for name in module_names if fnmatch.fnmatchcase(name, item)]
            if not matched:
                try:
                    hint = f'its blocks are {_preview(find_blocks(model))}'
                except ValueError:
                    hint = f'its top-level modules are {_preview([n for n in module_names if "." not in n])}'
                raise ValueError(
                    f'Block pattern {item!r} matches no module of {type(model).__name__}; {hint}.')
            for name in _outermost(matched):
                # a plain container is no block: its items are (timm's checkpointing and ModuleList loops call them,
                # not it), so 'layer*' on a ResNet selects layer1.0, layer1.1, ...
                items = list(_items(name + '.', modules[name])) if type(modules[name]) in _PLAIN_CONTAINERS else []
                chosen.update(items or [name])
        else:
            raise TypeError(f'A block selection item must be an int, a slice or a str, got {item!r}.')
    return _outermost([name for name in module_names if name in chosen])


def _slice_text(s: slice) -> str:
    return f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"


def _preview(names: Sequence[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ', '.join(names)
    return ', '.join(list(names[:limit // 2]) + ['...'] + list(names[-(limit // 2):]))


def _as_pair(value) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    return (value[0], value[0]) if len(value) == 1 else (value[-2], value[-1])


def token_patch_size(model: nn.Module) -> Optional[int]:
    """The side of the image patch each token covers, when the model's tokens are non-overlapping square image patches
    (a ``patch_embed`` whose token grid divides its image size and whose final projection, if a convolution, has
    kernel = stride); else None (no ``patch_embed``, overlapping embeddings as in PVT-v2, PiT, Hiera, MViT).

    The token stride ``patch_embed.img_size / grid_size`` is used where known: hybrid embeddings (RVT's, FAN's conv
    stems) report only their last projection's ``patch_size``.
    """
    model = unwrap_model(model)
    embed = getattr(model, 'patch_embed', None)
    if not isinstance(embed, nn.Module):
        return None
    proj = embed if isinstance(embed, nn.Conv2d) else getattr(embed, 'proj', None)
    if isinstance(proj, nn.Conv2d) and proj.kernel_size != proj.stride:
        return None
    img_size, grid = _as_pair(getattr(embed, 'img_size', None)), _as_pair(getattr(embed, 'grid_size', None))
    if img_size is not None and grid is not None and all(grid):
        if img_size[0] % grid[0] or img_size[1] % grid[1]:
            return None
        stride = (img_size[0] // grid[0], img_size[1] // grid[1])
    else:
        stride = _as_pair(getattr(embed, 'patch_size', None) or (proj.stride if isinstance(proj, nn.Conv2d) else None))
    if stride is None or stride[0] != stride[1]:
        return None
    return stride[0]


def find_patch_grid(
        model: nn.Module,
        img_size: Union[None, int, Sequence[int]] = None,
        patch_size: Optional[int] = None,
) -> Tuple[Tuple[int, int], int]:
    """The input (height, width) and the square patch size of the corruption model for ``model``.

    Explicit values win. The patch size is otherwise the model's own (`token_patch_size`) when at least
    `MIN_TOKEN_PATCH_SIZE`, else `DEFAULT_PATCH_SIZE`; the image size comes from ``patch_embed.img_size`` or the
    ``input_size`` of the model's pretrained cfg (pass the training resolution when it differs). An image size that
    is not a multiple of the patch size is a ValueError naming the nearest sizes that are.
    """
    model = unwrap_model(model)
    name = type(model).__name__
    if patch_size is None:
        own = token_patch_size(model)
        patch_size = own if own is not None and own >= MIN_TOKEN_PATCH_SIZE else DEFAULT_PATCH_SIZE
    size = _as_pair(img_size) or _as_pair(getattr(getattr(model, 'patch_embed', None), 'img_size', None))
    if size is None:
        input_size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size')
        size = _as_pair(input_size[-2:]) if input_size else None
    if size is None:
        raise ValueError(f'Cannot find the input size of {name}; pass img_size= (the training resolution).')
    if min(size) < 1 or patch_size < 1:
        raise ValueError(f'Image and patch sizes must be positive, got image {size[0]}x{size[1]}, patch {patch_size}.')
    if size[0] % patch_size or size[1] % patch_size:
        fits = sorted({max(patch_size, s // patch_size * patch_size) for s in size} |
                      {-(-s // patch_size) * patch_size for s in size})
        raise ValueError(
            f"Input size {size[0]}x{size[1]} is not a multiple of the corruption model's {patch_size} px patches "
            f"(RSPC corrupts whole patches): train at {' or '.join(str(f) for f in fits)} px (--img-size), or choose "
            f'a patch size that divides it (--rspc-patch-size, patch_size=).')
    return size, int(patch_size)


def _feature_tensors(output) -> Tuple[torch.Tensor, ...]:
    """A block's features: its output tensor, or every floating-point tensor of a tuple / list output (CrossViT's
    branches, CoaT's scales; MViT's and Swin-style ``(x, size)`` sizes are dropped)."""
    items = output if isinstance(output, (tuple, list)) else (output,)
    tensors = tuple(t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point())
    if not tensors:
        raise TypeError(f'A captured block returned {type(output).__name__} without a floating-point feature tensor.')
    return tensors


def _record_output(records: List[Tuple[Tuple[torch.Tensor, ...], bool]], module: nn.Module, args, output) -> None:
    # A view taken as the block runs puts the alignment's gradient path at this point of the graph, so autograd sums
    # it into the block output in the same order as when the distance is computed right here (gradients bit-identical
    # to that formulation). A view saves no tensors: an activation checkpoint recomputes without the hook just the same.
    records.append((tuple(t.view_as(t) for t in _feature_tensors(output)), torch.is_grad_enabled()))


class PairedBlockDistance:
    """Feature alignment of chosen blocks, measured over one paired forward pass.

    ``recording = alignment.record()`` hooks the chosen blocks; the model then runs once on ``cat([corrupted,
    clean])``; ``recording.measure()`` takes the hooks off and returns ``align_loss``: ``distance`` (by default
    `paired_mse`, the MSE between the corrupted and the clean half) of every chosen block's output, averaged by
    `mean_over_blocks`. Hooks exist only during that forward, so the model carries none otherwise (validation,
    inference, EMA and other copies see a plain model), and they only keep (a view of) each output: the distances are
    computed after the forward, outside any activation checkpoint, so the recomputation in backward does exactly
    what the forward did.

    Keeping the outputs costs no memory: autograd keeps each of them anyway (the next layer saves its input). A block
    output modified in place later in the forward would be measured after the change; models cannot do that to a
    tensor a following normalisation layer saved without autograd failing in backward.

    Args:
        model: any ``nn.Module`` (DDP / compiled wrappers are unwrapped to find names).
        blocks: the selection, see `select_blocks`.
        distance: maps one block's paired output to a 0-dim tensor.
    """

    def __init__(
            self,
            model: nn.Module,
            blocks: BlockSpec = None,
            distance: Callable[[torch.Tensor], torch.Tensor] = paired_mse,
    ):
        inner = unwrap_model(model)
        self.block_names: Tuple[str, ...] = tuple(select_blocks(inner, blocks))
        modules = dict(inner.named_modules())
        self.blocks: Tuple[nn.Module, ...] = tuple(modules[name] for name in self.block_names)
        self.distance = distance

    def __repr__(self) -> str:
        return f'{type(self).__name__}(blocks=[{_preview(self.block_names)}] ({len(self.block_names)}))'

    @torch.compiler.disable
    def record(self) -> 'AlignmentRecording':
        """Hook the chosen blocks until the recording's `measure` (or `close`).

        Runs eagerly: under ``torch.compile`` a graph break, so call it before any tensor operation; the forward pass
        then compiles as one graph, and the hooks' removal with the alignment loss as a second one."""
        records: List[Tuple[Tuple[torch.Tensor, ...], bool]] = []
        handles = [block.register_forward_hook(partial(_record_output, records)) for block in self.blocks]
        return AlignmentRecording(self, records, handles)

    def measure(self, records: Sequence[Tuple[Tuple[torch.Tensor, ...], bool]]) -> torch.Tensor:
        """``L_align`` from what the hooks recorded in one paired forward pass: (block features, grad mode) per
        block."""
        if len(records) != len(self.blocks):
            raise RuntimeError(
                f'Expected one output from each of the {len(self.blocks)} hooked blocks in this forward pass, '
                f'recorded {len(records)}: the forward skipped some or called them more than once. Choose modules '
                f'that run once per forward with --rspc-blocks / blocks= (see README, Model families).')
        if torch.is_grad_enabled():
            without_grad = [name for name, (_, grad) in zip(self.block_names, records) if not grad]
            if without_grad:
                raise RuntimeError(
                    f'Block {without_grad[0]} ran with autograd off inside a forward pass that has it on (re-entrant '
                    f'activation checkpointing?): its alignment would get no gradient. Use non-re-entrant '
                    f"checkpointing, timm's default (unset TIMM_REENTRANT_CKPT).")
        return mean_over_blocks([self._block_distance(features) for features, _ in records])

    def _block_distance(self, features: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(features) == 1:
            return self.distance(features[0])
        return torch.stack([self.distance(f) for f in features]).mean()


class AlignmentRecording(NamedTuple):
    """The chosen blocks' outputs in one forward pass, recorded from `PairedBlockDistance.record` until `measure` or
    `close`."""
    alignment: PairedBlockDistance
    records: List[Tuple[Tuple[torch.Tensor, ...], bool]]
    handles: List[RemovableHandle]

    def close(self) -> None:
        """Take the hooks off the model (idempotent); call it in a ``finally`` after the forward pass."""
        for handle in self.handles:
            handle.remove()

    def measure(self) -> torch.Tensor:
        """Take the hooks off and return ``L_align`` over what they recorded."""
        self.close()
        return self.alignment.measure(self.records)
