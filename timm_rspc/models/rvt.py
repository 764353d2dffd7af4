"""Robust Vision Transformer (RVT) and RVT* backbones, with the RSPC weights as pretrained tags.

Paper: *Towards Robust Vision Transformer* (Mao et al., CVPR 2022), the backbone family the RSPC paper
(*Improving Robustness of Vision Transformers by Reducing Sensitivity to Patch Corruptions*, Guo et al., CVPR 2023)
trains. Architecture facts follow the authors' code (the RVT and RSPC repositories).

An RVT is a ViT without class token or position embedding:

* a convolutional stem (7x7/2 conv, BN, 3x3/2 max-pool, 4x4/4 conv) gives a 14x14 token grid at 224x224;
* transformer blocks whose feed-forward is convolutional (1x1 conv, BN, GELU, depthwise 3x3, BN, GELU, 1x1, BN),
  except for width 768 where it is the usual Linear MLP; RVT-Ti downsamples once with a depthwise stride-2 conv;
* RVT* ("plus") adds *position-aware attention scaling* to the first blocks: a learnable ``(heads, N, N)`` map whose
  sigmoid multiplies the attention logits before the softmax;
* global average pooling, LayerNorm, Linear.

Layout (what the RSPC method layer hooks): ``model.blocks`` is the flat, ordered list of every transformer block
across stages. Each block is called as ``block(tokens, grid_size)`` and returns the ``(B, H*W, C)`` token tensor of
its ``grid_size=(H, W)`` grid. ``model.pools['i']`` downsamples the tokens right before block ``i`` (RVT-Ti: ``'10'``).
``model.patch_embed`` has timm's ``patch_size`` / ``grid_size`` / ``dynamic_feat_size()`` attributes.

The attention layout (which blocks carry a scaling map, Linear or conv q/k/v) is a construction argument
(``scaled_blocks``, ``conv_qkv``): the training script's ``*_plus_afat`` variants compute q/k/v with a small conv, and
a checkpoint may have scaling maps in other blocks than the published ones. `checkpoint_filter_fn` reads the layout of
the weights and refuses a model built with another one, saying how to build the matching model; it never changes the
model it loads into.

The forward is TorchScript- and fx-traceable. With timm's fused attention off (``timm.layers.set_fused_attn(False)``)
every block computes ``softmax`` and ``attn_drop`` explicitly, so `timm.utils.AttentionExtract` finds the maps.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, Mlp, register_notrace_function, to_2tuple, trunc_normal_, use_fused_attn,
)
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv, checkpoint

from .._timm_compat import get_device_dtype
from ._registry import register_model
from .checkpoint_loading import (
    CheckpointError, CheckpointMismatchError, build_model_with_package_loader, load_pretrained_into,
)
from .hub_ids import with_hub_ids
from .paper_results import RSPC_CVF_URL, RSPC_PAPER, paper_notes
from .release_info import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, RSPC_LICENSE, RSPC_ORIGIN, RSPC_RELEASES, RVT_ORIGIN,
)

__all__ = ['RVT', 'checkpoint_filter_fn', 'resample_attn_scale']

GridSize = Tuple[int, int]


def _tokens_to_nchw(x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
    B, N, C = x.shape
    return x.transpose(1, 2).reshape(B, C, grid_size[0], grid_size[1])


def _nchw_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


@register_notrace_function  # fx: a leaf (it branches on the grid), TorchScript: compiled as is
def resample_attn_scale(attn_scale: torch.Tensor, old_grid: GridSize, new_grid: GridSize) -> torch.Tensor:
    """Resample a ``(heads, N, N)`` position-aware attention scaling map to another token grid.

    Both the query and the key axis are 2-D token grids, so the map is resampled (bicubic, on its pre-sigmoid
    values) along the key grid, then along the query grid, like timm resamples position embeddings.
    """
    old_h, old_w = old_grid[0], old_grid[1]
    new_h, new_w = new_grid[0], new_grid[1]
    if old_h == new_h and old_w == new_w:
        return attn_scale
    heads, n_old, n_new = attn_scale.shape[0], old_h * old_w, new_h * new_w
    if attn_scale.shape[1] != n_old or attn_scale.shape[2] != n_old:
        raise ValueError(
            f'Attention scaling map of shape {list(attn_scale.shape)} does not match grid ({old_h}, {old_w}).')
    x = attn_scale.float().reshape(heads * n_old, 1, old_h, old_w)
    x = F.interpolate(x, size=(new_h, new_w), mode='bicubic', align_corners=False)  # keys resampled
    x = x.reshape(heads, n_old, n_new).transpose(1, 2).reshape(heads * n_new, 1, old_h, old_w)
    x = F.interpolate(x, size=(new_h, new_w), mode='bicubic', align_corners=False)  # queries resampled
    return x.reshape(heads, n_new, n_new).transpose(1, 2).to(attn_scale.dtype)


@register_notrace_function  # fx: a leaf (public name: fx wraps no _private function), run on real sizes
def check_token_grid(grid_size: GridSize, expected: GridSize, img_size: GridSize,
                     expected_img_size: GridSize) -> GridSize:
    """Refuse an input whose token grid the fixed-size scaling maps of an RVT* do not cover (they would broadcast
    wrongly or fail deep inside attention), saying which sizes work. Returns ``grid_size``, so that an fx graph uses
    the check's output and keeps it."""
    if grid_size[0] != expected[0] or grid_size[1] != expected[1]:
        h, w = expected_img_size[0], expected_img_size[1]
        raise ValueError(
            f'This RVT* model needs {h}x{w} input: its position-aware attention scaling maps cover a '
            f'{expected[0]}x{expected[1]} token grid. Got {img_size[0]}x{img_size[1]} input ({grid_size[0]}x'
            f'{grid_size[1]} tokens). Resize the input to {h}x{w}, or create the model with '
            f'img_size=({img_size[0]}, {img_size[1]}) (maps are resampled when weights load) or with '
            f'dynamic_img_size=True (maps are resampled at every forward).'
        )
    return grid_size


class ConvStem(nn.Module):
    """Convolutional patch embedding: 7x7/2 conv, BN, 3x3/2 max-pool, 4x4/4 conv; overall stride 16, NCHW output.

    Exposes timm's patch-embedding attributes (``img_size``, ``patch_size``, ``grid_size``, ``num_patches``,
    ``dynamic_feat_size``) so that code working on patches (like RSPC's corruption model) finds the token grid.
    """

    def __init__(self, img_size: Union[int, GridSize] = 224, in_chans: int = 3, embed_dim: int = 384,
                 stem_chs: int = 32, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.img_size = to_2tuple(img_size)
        self.patch_size = (16, 16)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv1 = nn.Conv2d(in_chans, stem_chs, kernel_size=7, stride=2, padding=2, **dd)
        self.norm = nn.BatchNorm2d(stem_chs, **dd)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.proj = nn.Conv2d(stem_chs, embed_dim, kernel_size=4, stride=4, **dd)

    @torch.jit.ignore
    def feat_ratio(self, as_scalar: bool = True) -> Union[int, GridSize]:
        return self.patch_size[0] if as_scalar else self.patch_size

    @staticmethod
    def dynamic_feat_size(img_size: GridSize) -> GridSize:
        """Token grid for an input of ``img_size`` (exact for every size, not just multiples of 16)."""
        def size(s):
            s = (s - 3) // 2 + 1  # 7x7 conv, stride 2, padding 2
            s = (s - 1) // 2 + 1  # 3x3 max-pool, stride 2, padding 1
            return s // 4  # 4x4 conv, stride 4
        return size(img_size[0]), size(img_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.norm(self.conv1(x))))


class LinearQkv(nn.Linear):
    """The usual Linear q/k/v projection, called like `ConvQkv` (``(tokens, grid_size)``)."""

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ConvQkv(nn.Module):
    """q/k/v from a 3x3 conv on the token grid, a ReLU and a 1x1 conv (``patch_reasoning`` in the ``*_afat``
    variants of the RSPC training script). The hidden width is ``floor(3 * dim / 12)``."""

    def __init__(self, dim: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = (3 * dim) // (3 * 3 + 3)
        self.conv1 = nn.Conv2d(dim, hidden, kernel_size=3, padding=1, bias=bias, **dd)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, dim * 3, kernel_size=1, bias=bias, **dd)

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        return _nchw_to_tokens(self.conv2(self.act(self.conv1(_tokens_to_nchw(x, grid_size)))))


class RvtAttention(nn.Module):
    """Multi-head self-attention, optionally with position-aware attention scaling and/or conv q/k/v.

    Without a scaling map and with timm's fused attention on, this runs through ``F.scaled_dot_product_attention``.
    A scaling map multiplies the logits element-wise by ``sigmoid(attn_scale)``, which no fused kernel expresses, so
    that path is explicit (it is the first 5-10 blocks of RVT* only), like the non-fused one: both compute
    ``softmax`` and ``attn_drop`` by name, where `timm.utils.AttentionExtract` finds the attention maps.
    """
    fused_attn: torch.jit.Final[bool]
    dynamic_scale: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            scale_grid: Optional[GridSize] = None,
            conv_qkv: bool = False,
            dynamic_scale: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        assert dim % num_heads == 0, 'dim should be divisible by num_heads'
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.conv_qkv = conv_qkv
        self.qkv = ConvQkv(dim, bias=qkv_bias, **dd) if conv_qkv else LinearQkv(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.scale_grid: GridSize = (0, 0) if scale_grid is None else (int(scale_grid[0]), int(scale_grid[1]))
        self.dynamic_scale = dynamic_scale
        if scale_grid is not None:
            n = self.scale_grid[0] * self.scale_grid[1]
            self.attn_scale = nn.Parameter(torch.empty(num_heads, n, n, **dd))
            trunc_normal_(self.attn_scale, std=.02)
        else:
            self.attn_scale = None

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x, grid_size)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn_scale = self.attn_scale
        if attn_scale is not None:
            if self.dynamic_scale:
                attn_scale = resample_attn_scale(attn_scale, self.scale_grid, grid_size)
            attn = (q @ k.transpose(-2, -1)) * (self.scale * attn_scale.sigmoid())
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        elif self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class ConvMlp(nn.Module):
    """RVT's convolutional feed-forward on the token grid: 1x1 conv, BN, GELU, depthwise 3x3, BN, GELU, 1x1, BN."""

    def __init__(self, dim: int, hidden_dim: int, act_layer=nn.GELU, drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1, **dd)
        self.bn1 = nn.BatchNorm2d(hidden_dim, **dd)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim, **dd)
        self.bn2 = nn.BatchNorm2d(hidden_dim, **dd)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1, **dd)
        self.bn3 = nn.BatchNorm2d(dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        x = _tokens_to_nchw(x, grid_size)
        x = self.drop(self.act(self.bn1(self.fc1(x))))
        x = self.act(self.bn2(self.dwconv(x)))
        x = self.drop(self.bn3(self.fc2(x)))
        return _nchw_to_tokens(x)


class LinearMlp(Mlp):
    """timm's Linear MLP with the block's ``(tokens, grid_size)`` signature (RVT-B uses it at width 768)."""

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        x = self.norm(self.drop1(self.act(self.fc1(x))))
        return self.drop2(self.fc2(x))


class RvtBlock(nn.Module):
    """Pre-norm transformer block on ``(B, H*W, C)`` tokens; the grid size is passed along for the conv parts."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            conv_mlp: bool = True,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            scale_grid: Optional[GridSize] = None,
            conv_qkv: bool = False,
            dynamic_scale: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = RvtAttention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            scale_grid=scale_grid, conv_qkv=conv_qkv, dynamic_scale=dynamic_scale, **dd,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        hidden_dim = int(dim * mlp_ratio)
        if conv_mlp:
            self.mlp = ConvMlp(dim, hidden_dim, drop=proj_drop, **dd)
        else:
            self.mlp = LinearMlp(dim, hidden_dim, act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), grid_size))
        x = x + self.drop_path2(self.mlp(self.norm2(x), grid_size))
        return x


class TokenPool(nn.Module):
    """Stage transition of RVT-Ti: depthwise-grouped 3x3 stride-2 conv on the token grid, widening the channels."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1, groups=in_dim,
                              device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> Tuple[torch.Tensor, GridSize]:
        x = self.conv(_tokens_to_nchw(x, grid_size))
        return _nchw_to_tokens(x), (x.shape[-2], x.shape[-1])


class RVT(nn.Module):
    """Robust Vision Transformer (RVT / RVT*)."""
    fixed_input_size: torch.jit.Final[bool]

    def __init__(
            self,
            img_size: Union[int, GridSize] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (384,),
            depths: Sequence[int] = (12,),
            num_heads: Sequence[int] = (6,),
            mlp_ratio: float = 4.,
            conv_mlp: bool = True,
            qkv_bias: bool = True,
            num_scaled_blocks: int = 0,
            scaled_blocks: Optional[Sequence[int]] = None,
            conv_qkv: bool = False,
            dynamic_img_size: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Input size the position-aware attention scaling maps are built for.
            in_chans: Number of input channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: 'avg' (tokens are averaged, then normalised) or '' (per-token norm and head).
            embed_dims: Width of each stage; stages after the first start with a stride-2 `TokenPool`.
            depths: Number of blocks per stage.
            num_heads: Attention heads per stage.
            mlp_ratio: Hidden width of the feed-forward relative to the block width.
            conv_mlp: Convolutional feed-forward (RVT-Ti/S) instead of the Linear MLP (RVT-B).
            qkv_bias: Bias in the q/k/v projection.
            num_scaled_blocks: Number of leading blocks with position-aware attention scaling (RVT*).
            scaled_blocks: Indices of the blocks with position-aware attention scaling, for checkpoints whose maps
                are not in the leading blocks (overrides ``num_scaled_blocks``).
            conv_qkv: Compute q/k/v with a small conv (``*_plus_afat`` checkpoints) instead of a Linear.
            dynamic_img_size: Accept other input sizes on RVT*, resampling the scaling maps at every forward.
            drop_rate: Dropout before the classifier.
            pos_drop_rate: Dropout on the stem's tokens.
            proj_drop_rate: Dropout after the attention projection and in the feed-forward.
            attn_drop_rate: Dropout on the attention weights.
            drop_path_rate: Stochastic depth; block ``i`` of ``n`` drops with ``drop_path_rate * i / n`` (the
                schedule of the authors' code).
            device: Device of the parameters and buffers (as timm's models: ``create_model(..., device='meta')``).
            dtype: Their dtype.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        assert len(embed_dims) == len(depths) == len(num_heads), 'one width, depth and head count per stage'
        assert global_pool in ('avg', ''), "global_pool must be 'avg' or ''"
        total_depth = sum(depths)
        if scaled_blocks is None:
            if not 0 <= num_scaled_blocks <= total_depth:
                raise ValueError(f'num_scaled_blocks must be between 0 and {total_depth}, got {num_scaled_blocks}.')
            scaled_blocks = range(num_scaled_blocks)
        elif num_scaled_blocks:
            raise ValueError('Give either num_scaled_blocks or scaled_blocks, not both.')
        self.scaled_blocks = tuple(sorted(set(int(i) for i in scaled_blocks)))
        if not set(self.scaled_blocks) <= set(range(total_depth)):
            raise ValueError(f'scaled_blocks {list(self.scaled_blocks)} must index the {total_depth} blocks.')
        self.conv_qkv = conv_qkv
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.fixed_input_size = bool(self.scaled_blocks) and not dynamic_img_size
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        self.grad_checkpointing = False

        self.patch_embed = ConvStem(img_size, in_chans=in_chans, embed_dim=embed_dims[0], **dd)
        self.pos_drop = nn.Dropout(pos_drop_rate)

        blocks, pools, self.feature_info, self._block_grids = [], {}, [], []
        grid, reduction = self.patch_embed.grid_size, self.patch_embed.feat_ratio()
        for stage, (dim, depth, heads) in enumerate(zip(embed_dims, depths, num_heads)):
            if stage > 0:
                pools[str(len(blocks))] = TokenPool(embed_dims[stage - 1], dim, **dd)
                grid, reduction = ((grid[0] - 1) // 2 + 1, (grid[1] - 1) // 2 + 1), reduction * 2
            for _ in range(depth):
                i = len(blocks)
                blocks.append(RvtBlock(
                    dim, heads, mlp_ratio=mlp_ratio, conv_mlp=conv_mlp, qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=drop_path_rate * i / total_depth,
                    scale_grid=grid if i in self.scaled_blocks else None, conv_qkv=conv_qkv,
                    dynamic_scale=dynamic_img_size, **dd,
                ))
                self._block_grids.append(grid)
                self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'blocks.{i}'))
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleDict(pools)
        self.last_stage_start = total_depth - depths[-1]  # blocks of the final norm's width

        self.norm = nn.LayerNorm(self.num_features, eps=1e-6, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        # timm's data config: the input size, fixed while scaling maps need it
        self._traits = dict(img_size=self.patch_embed.img_size, fixed_input_size=self.fixed_input_size)

    # --- timm model API ---

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond timm's default (1-D parameters): the authors' recipe weight-decays the scaling maps."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^patch_embed',
            blocks=[(r'^(?:blocks|pools)\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('avg', ''), "global_pool must be 'avg' or ''"
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a release file (any container format, non-EMA weights); timm calls this for ``pretrained=True``."""
        load_pretrained_into(self, checkpoint_path, checkpoint_filter_fn)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, GridSize]:
        img_size = (x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        grid_size = (x.shape[-2], x.shape[-1])
        if self.fixed_input_size:
            grid_size = check_token_grid(grid_size, self.patch_embed.grid_size, img_size, self.patch_embed.img_size)
        return self.pos_drop(_nchw_to_tokens(x)), grid_size

    def _pool_before(self, i: int, x: torch.Tensor, grid_size: GridSize) -> Tuple[torch.Tensor, GridSize]:
        """The stage transition before block ``i``, if any (a loop, not a lookup: TorchScript indexes module
        containers with constants only)."""
        for key, pool in self.pools.items():
            if int(key) == i:
                x, grid_size = pool(x, grid_size)
        return x, grid_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` to the last block's tokens ``(B, N, C)`` (not normalised: the norm is after
        pooling, in `forward_head`)."""
        x, grid_size = self._embed(x)
        for i, blk in enumerate(self.blocks):
            x, grid_size = self._pool_before(i, x, grid_size)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, grid_size)
            else:
                x = blk(x, grid_size)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(self.norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Outputs of the blocks at ``indices`` (last n if int, all if None), and `forward_features`' output.

        ``norm=True`` applies the final LayerNorm to the intermediates where it fits: to blocks of the last stage's
        width (RVT-Ti's first stage, 192 channels, stays unnormalised), as timm's multi-stage models do.
        """
        assert output_fmt in ('NCHW', 'NLC'), 'Output format must be one of NCHW or NLC.'
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        intermediates = []
        x, grid_size = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            x, grid_size = self._pool_before(i, x, grid_size)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, grid_size)
            else:
                x = blk(x, grid_size)
            if i in take_indices:
                y = self.norm(x) if norm and i >= self.last_stage_start else x
                intermediates.append(_tokens_to_nchw(y, grid_size) if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and pools) after the last needed intermediate; optionally the norm and the head."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.pools = nn.ModuleDict({k: v for k, v in self.pools.items() if int(k) <= max_index})
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


# --- checkpoints ---

def _official_key(key: str, stage_offsets: Sequence[int]) -> str:
    """Map one key of the authors' RVT / RSPC code to this module's naming (identity for native keys)."""
    parts = key.split('.')
    if parts[0] == 'patch_embed' and parts[1] == 'proj':  # Sequential(conv, BN, max-pool, conv)
        name = {'0': 'conv1', '1': 'norm', '3': 'proj'}[parts[2]]
        return '.'.join(['patch_embed', name] + parts[3:])
    if parts[0] == 'transformers':  # transformers.{stage}.blocks.{i} -> blocks.{global i}
        block = stage_offsets[int(parts[1])] + int(parts[3])
        rest = '.'.join(parts[4:])
        rest = rest.replace('attn.att_mask', 'attn.attn_scale')
        rest = rest.replace('attn.patch_reasoning.0.', 'attn.qkv.conv1.').replace('attn.patch_reasoning.2.',
                                                                                     'attn.qkv.conv2.')
        return f'blocks.{block}.{rest}'
    if parts[0] == 'pools':  # pools.{stage}.conv -> pools.{first block of the next stage}.conv
        return '.'.join(['pools', str(stage_offsets[int(parts[1]) + 1])] + parts[2:])
    return key


def _convert_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    depths = {}
    for k in state_dict:
        if k.startswith('transformers.'):
            _, stage, _, block = k.split('.')[:4]
            depths[int(stage)] = max(depths.get(int(stage), 0), int(block) + 1)
    offsets = [sum(depths.get(s, 0) for s in range(stage)) for stage in range(len(depths) + 1)]
    return {_official_key(k, offsets): v for k, v in state_dict.items()}


def _layout_key(key: str) -> bool:
    return key.endswith('.attn.attn_scale') or '.attn.qkv.' in key


def _layout_args(scaled_blocks: Sequence[int], conv_qkv: bool) -> str:
    """The construction arguments that give a model this attention layout."""
    scaled = list(scaled_blocks)
    blocks = f'num_scaled_blocks={len(scaled)}' if scaled == list(range(len(scaled))) else \
        f'scaled_blocks={tuple(scaled)}'
    return f'{blocks}, conv_qkv={conv_qkv}'


def _check_attention_layout(state_dict: Dict[str, torch.Tensor], model: 'RVT') -> None:
    """Refuse weights whose attention layout differs from the model's, naming both and the matching model."""
    scaled = sorted(
        int(k.split('.')[1]) for k in state_dict if k.startswith('blocks.') and k.endswith('.attn.attn_scale'))
    conv_qkv = any(k.endswith('.attn.qkv.conv1.weight') for k in state_dict)
    if (tuple(scaled), conv_qkv) == (model.scaled_blocks, model.conv_qkv):
        return
    if {k for k in state_dict if not _layout_key(k)} != {k for k in model.state_dict() if not _layout_key(k)}:
        return  # another architecture altogether: the strict load names the keys
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    build = f"timm.create_model('{arch}', {{}})" if arch else 'RVT(..., {})'
    raise CheckpointMismatchError(
        f'the weights have another attention layout than the model: {_layout_args(scaled, conv_qkv)} in the '
        f'weights, {_layout_args(model.scaled_blocks, model.conv_qkv)} in the model. Build the matching model: '
        + build.format(_layout_args(scaled, conv_qkv))
    )


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: RVT) -> Dict[str, torch.Tensor]:
    """Prepare a state dict (authors' naming or native) for a strict load into ``model``.

    1. Keys of the authors' code (``transformers.{s}.blocks.{i}``, ``patch_embed.proj.{0,1,3}``, ``att_mask``,
       ``patch_reasoning``) are renamed.
    2. The attention layout of the weights (which blocks have a scaling map, Linear or conv q/k/v) must be the
       model's: a `CheckpointMismatchError` names both and the construction arguments of the matching model. The
       model is never changed.
    3. Scaling maps are resampled if the model was built for another ``img_size``; the stem's first conv is adapted
       to ``in_chans`` as timm does.
    """
    if any(k.startswith('transformers.') for k in state_dict):
        state_dict = _convert_official(state_dict)
    if not isinstance(model, RVT):
        return state_dict
    _check_attention_layout(state_dict, model)

    for i in model.scaled_blocks:
        key = f'blocks.{i}.attn.attn_scale'
        if key not in state_dict or i >= len(model.blocks):
            continue  # another architecture: reported by the strict load
        grid = model._block_grids[i]
        n = state_dict[key].shape[-1]
        if n != grid[0] * grid[1]:
            side = math.isqrt(n)
            if side * side != n:
                raise CheckpointError(f'{key} has {n} positions, not a square token grid; cannot resample it.')
            state_dict[key] = resample_attn_scale(state_dict[key], (side, side), grid)

    stem_key = 'patch_embed.conv1.weight'
    in_chans = model.patch_embed.conv1.in_channels
    if stem_key in state_dict and state_dict[stem_key].shape[1] != in_chans:
        state_dict[stem_key] = adapt_input_conv(in_chans, state_dict[stem_key])
    return state_dict


def _create_rvt(variant: str, pretrained: bool = False, **kwargs) -> RVT:
    return build_model_with_package_loader(
        RVT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop('out_indices', 3), feature_cls='getter'),
        **kwargs,
    )


# --- pretrained cfgs ---

def _cfg(url: str = '', **kwargs) -> Dict:
    """Every cfg loads through `RVT.load_pretrained` (``custom_load``): release files are training checkpoints in
    the authors' naming, and timm's generic loader would pick their EMA weights."""
    return {
        'url': url, 'custom_load': True,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.conv1', 'classifier': 'head',
        'paper_name': 'Towards Robust Vision Transformer', 'paper_ids': 'arXiv:2105.07926',
        'origin_url': RVT_ORIGIN,
        **kwargs,
    }


def _rspc_cfg(name: str, release_file: str, **kwargs) -> Dict:
    """RSPC release weights (the RSPC repository is MIT-licensed)."""
    return _cfg(  # RVT*: the scaling maps fix the input size (see RVT's dynamic_img_size)
        url=RSPC_RELEASES + release_file, notes=paper_notes(name), license=RSPC_LICENSE, fixed_input_size=True,
        paper_name=RSPC_PAPER, paper_ids=RSPC_CVF_URL, origin_url=RSPC_ORIGIN,
        **kwargs,
    )


_cifar10 = dict(num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
_cifar100 = dict(num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD)

default_cfgs = generate_default_cfgs(with_hub_ids({
    'rvt_tiny': _cfg(),
    'rvt_tiny_plus.rspc_in1k': _rspc_cfg('rvt_tiny_plus.rspc_in1k', 'v1.0/rspc_rvt_tiny.pth.tar'),
    'rvt_small': _cfg(),
    'rvt_small_plus.rspc_in1k': _rspc_cfg('rvt_small_plus.rspc_in1k', 'v1.0/rspc_rvt_small.pth.tar'),
    'rvt_small_plus.rspc_cifar10': _rspc_cfg(
        'rvt_small_plus.rspc_cifar10', 'v1.1/rspc_rvt_small_cifar10.pth.tar', **_cifar10),
    'rvt_small_plus.rspc_cifar100': _rspc_cfg(
        'rvt_small_plus.rspc_cifar100', 'v1.1/rspc_rvt_small_cifar100.pth.tar', **_cifar100),
    'rvt_base': _cfg(),
    'rvt_base_plus.rspc_in1k': _rspc_cfg('rvt_base_plus.rspc_in1k', 'v1.0/rspc_rvt_base.pth.tar'),
    # Short names of the paper's models (RSPC-RVT-Ti/S/B), defaulting to the ImageNet RSPC weights.
    'rvt_ti_rspc.rspc_in1k': _rspc_cfg('rvt_tiny_plus.rspc_in1k', 'v1.0/rspc_rvt_tiny.pth.tar'),
    'rvt_s_rspc.rspc_in1k': _rspc_cfg('rvt_small_plus.rspc_in1k', 'v1.0/rspc_rvt_small.pth.tar'),
    'rvt_b_rspc.rspc_in1k': _rspc_cfg('rvt_base_plus.rspc_in1k', 'v1.0/rspc_rvt_base.pth.tar'),
}))


# --- model entry points ---

_TINY = dict(embed_dims=(192, 384), depths=(10, 2), num_heads=(6, 12), conv_mlp=True)
_SMALL = dict(embed_dims=(384,), depths=(12,), num_heads=(6,), conv_mlp=True)
_BASE = dict(embed_dims=(768,), depths=(12,), num_heads=(12,), conv_mlp=False)


def _rvt(variant: str, pretrained: bool, arch: Dict, published_scaled_blocks: int = 0, **kwargs) -> RVT:
    """Build ``variant`` with the widths of ``arch`` and, unless the layout is given, its published number of
    leading scaled blocks."""
    if kwargs.get('scaled_blocks') is None:
        kwargs.setdefault('num_scaled_blocks', published_scaled_blocks)
    return _create_rvt(variant, pretrained, **{**arch, **kwargs})


@register_model
def rvt_tiny(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-Ti: 8.6M parameters."""
    return _rvt('rvt_tiny', pretrained, _TINY, **kwargs)


@register_model
def rvt_tiny_plus(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-Ti*: RVT-Ti with position-aware attention scaling in the first 10 blocks; 11.0M parameters."""
    return _rvt('rvt_tiny_plus', pretrained, _TINY, published_scaled_blocks=10, **kwargs)


@register_model
def rvt_small(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-S: 22.1M parameters."""
    return _rvt('rvt_small', pretrained, _SMALL, **kwargs)


@register_model
def rvt_small_plus(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-S*: RVT-S with position-aware attention scaling in the first 5 blocks; 23.3M parameters."""
    return _rvt('rvt_small_plus', pretrained, _SMALL, published_scaled_blocks=5, **kwargs)


@register_model
def rvt_base(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-B: 86.2M parameters."""
    return _rvt('rvt_base', pretrained, _BASE, **kwargs)


@register_model
def rvt_base_plus(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-B*: RVT-B with position-aware attention scaling in the first 5 blocks; 88.5M parameters."""
    return _rvt('rvt_base_plus', pretrained, _BASE, published_scaled_blocks=5, **kwargs)


@register_model
def rvt_ti_rspc(pretrained: bool = False, **kwargs) -> RVT:
    """RSPC-RVT-Ti: `rvt_tiny_plus` with the RSPC ImageNet weights as default tag."""
    return _rvt('rvt_ti_rspc', pretrained, _TINY, published_scaled_blocks=10, **kwargs)


@register_model
def rvt_s_rspc(pretrained: bool = False, **kwargs) -> RVT:
    """RSPC-RVT-S: `rvt_small_plus` with the RSPC ImageNet weights as default tag."""
    return _rvt('rvt_s_rspc', pretrained, _SMALL, published_scaled_blocks=5, **kwargs)


@register_model
def rvt_b_rspc(pretrained: bool = False, **kwargs) -> RVT:
    """RSPC-RVT-B: `rvt_base_plus` with the RSPC ImageNet weights as default tag."""
    return _rvt('rvt_b_rspc', pretrained, _BASE, published_scaled_blocks=5, **kwargs)
