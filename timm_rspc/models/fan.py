"""FAN: Fully Attentional Networks (FAN-ViT and FAN-Hybrid), with the RSPC and the original FAN weights.

Paper: `Understanding The Robustness in Vision Transformers` (Zhou et al., ICML 2022) - https://arxiv.org/abs/2204.12451
RSPC weights: `Improving Robustness of Vision Transformers by Reducing Sensitivity to Patch Corruptions`
(Guo, Stutz, Schiele, CVPR 2023), which trains FAN-Hybrid backbones.

A FAN block is a ViT block whose MLP is replaced by "channel processing": a channel attention whose values go through a
depthwise-convolution MLP. FAN-ViT embeds patches with a stride-16 conv stack (as XCiT); FAN-Hybrid embeds them with
the first two stages of a ConvNeXt and a 2x2 projection (stride 16 overall). Both end like XCiT/CaiT: a class token,
two class-attention blocks, a LayerNorm and a linear head.

Written for timm from the facts (shapes, key names, numerics) of the official code (the FAN repository and the RSPC
repository's FAN folder); the official checkpoints load unchanged through `checkpoint_filter_fn`, and logits match the
official model to fp32 round-off.

For feature capture (the RSPC method layer hooks every FAN block):
* ``model.blocks`` holds all FAN blocks, in order; each maps ``(B, N, C)`` patch tokens to ``(B, N, C)``, with
  ``N = Hp * Wp`` in row-major order and no prefix tokens (``model.num_prefix_tokens == 0``). The class token is only
  prepended afterwards, for ``model.cls_attn_blocks``.
* ``model.patch_embed.patch_size`` (pixels per token, ``(16, 16)``), ``.grid_size`` (token grid at ``.img_size``) and
  ``.dynamic_feat_size((H, W))`` (token grid of any input size) describe the grid.
"""
import math
from collections import OrderedDict
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, register_notrace_module, to_2tuple, trunc_normal_, use_fused_attn,
)
from timm.models import checkpoint, generate_default_cfgs, named_apply
from timm.models._features import feature_take_indices
from timm.models.convnext import ConvNeXtStage
from timm.models.xcit import ClassAttentionBlock, ConvPatchEmbed as XcitConvPatchEmbed, PositionalEncodingFourier

from .._timm_compat import get_device_dtype
from ._registry import register_model
from .checkpoint_loading import build_model_with_package_loader, load_pretrained_into
from .hub_ids import with_hub_ids
from .paper_results import RSPC_CVF_URL, RSPC_PAPER, paper_notes
from .release_info import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, FAN_LICENSE, FAN_ORIGIN, FAN_RELEASES, RSPC_ORIGIN,
    RSPC_RELEASES,
)

__all__ = ['Fan', 'checkpoint_filter_fn']

# Normalisation of the RSPC CIFAR training code (EXP_CIFAR/datasets.py).


@register_notrace_module  # fx: a leaf, its branch depends on the input's memory layout
class ConvNeXtLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, with the numerics the FAN-Hybrid weights were trained with.

    The official FAN-Hybrid stem copies an early timm ConvNeXt whose LayerNorm2d normalises an input in the default
    (contiguous) memory layout with ``F.layer_norm``, but any other input (e.g. ``channels_last``) with
    ``torch.var_mean``'s default *unbiased* variance (divisor C - 1 instead of C). Both branches are kept so that the
    released weights see exactly the normalisation they were trained and evaluated with, whatever the memory format;
    timm's own LayerNorm2d always uses the biased variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.contiguous_format):
            x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)
        var, mean = torch.var_mean(x, dim=1, keepdim=True)  # unbiased, as in the official code
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class _TokenGrid:
    """Token-grid attributes shared by both patch embeddings (timm PatchEmbed names)."""
    img_size: Tuple[int, int]
    patch_size: Tuple[int, int]

    def _set_grid(self, img_size: Union[int, Tuple[int, int]], patch_size: int):
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]


class ConvPatchEmbed(_TokenGrid, XcitConvPatchEmbed):
    """FAN-ViT patch embedding: four stride-2 3x3 conv-BN layers with GELU between (XCiT's, same keys)."""

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 act_layer: Type[nn.Module] = nn.GELU, device=None, dtype=None):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         act_layer=act_layer, device=device, dtype=dtype)
        self._set_grid(img_size, patch_size)

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid for an input of ``img_size``: each padded stride-2 conv rounds up."""
        return math.ceil(img_size[0] / self.patch_size[0]), math.ceil(img_size[1] / self.patch_size[1])


class HybridBackbone(nn.Module):
    """The first two stages of a ConvNeXt (4x4 stem, no head): FAN-Hybrid's convolutional stem, stride 8."""

    def __init__(self, in_chans: int = 3, depths: Sequence[int] = (3, 3), dims: Sequence[int] = (128, 256),
                 device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        norm_layer = partial(ConvNeXtLayerNorm2d, eps=1e-6)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4, **dd), norm_layer(dims[0], **dd))
        stages, prev_dim = [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(
                prev_dim, dim, stride=1 if i == 0 else 2, depth=depth, ls_init_value=1e-6, conv_mlp=True,
                norm_layer=norm_layer, **dd,
            ))
            prev_dim = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = prev_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridPatchEmbed(_TokenGrid, nn.Module):
    """FAN-Hybrid patch embedding: ConvNeXt stem (stride 8), then a 2x2 stride-2 projection to ``embed_dim``."""

    def __init__(self, img_size=224, in_chans: int = 3, embed_dim: int = 384,
                 depths: Sequence[int] = (3, 3), dims: Sequence[int] = (128, 256), device=None, dtype=None):
        super().__init__()
        self.backbone = HybridBackbone(in_chans, depths, dims, device=device, dtype=dtype)
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=2, stride=2, device=device,
                              dtype=dtype)
        self._set_grid(img_size, 16)

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid for an input of ``img_size``: the unpadded strided convs round down."""
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(self.backbone(x))
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class TokenMixing(nn.Module):
    """Multi-head self-attention over tokens, with separate q and kv projections (official key names).

    Fused (``F.scaled_dot_product_attention``) unless timm's fused attention is off, as in timm's ViT.
    """
    fused_attn: torch.jit.Final[bool]

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        assert dim % num_heads == 0, f'dim {dim} must be divisible by num_heads {num_heads}'
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        else:  # by name, where timm.utils.AttentionExtract finds the map
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class DepthwiseConvMlp(nn.Module):
    """FAN's value MLP: ``fc2(x + gamma * dwconv(x))`` with ``x = fc1(tokens)``.

    ``dwconv`` runs on the token grid: depthwise 3x3 conv -> GELU -> BatchNorm -> depthwise 3x3 conv. As in the
    official code there is no activation between fc1 and the residual.
    """

    def __init__(self, in_features: int, hidden_features: int, act_layer: Type[nn.Module] = nn.GELU,
                 drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.dwconv = nn.Sequential(OrderedDict([
            ('conv1', nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features, **dd)),
            ('act', act_layer()),
            ('bn', nn.BatchNorm2d(hidden_features, **dd)),
            ('conv2', nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features, **dd)),
        ]))
        self.gamma = nn.Parameter(torch.ones(hidden_features, **dd))
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, **dd)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = self.fc1(x)
        conv = self.dwconv(x.transpose(1, 2).reshape(B, -1, H, W)).flatten(2).transpose(1, 2)
        x = self.drop(self.gamma * conv) + x
        return self.drop(self.fc2(x))


class ChannelProcessing(nn.Module):
    """FAN's channel attention: per head, a sigmoid gate over channels scales the MLP-processed values.

    The gate of channel c in head h is ``sigmoid(sum_n softmax_n(q)[n, c] * mean_c'(softmax_n(x)[n, c']))`` times a
    learned per-head temperature; the values are ``norm_v(mlp_v(x))`` (a LayerNorm with PyTorch's default eps 1e-5).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, mlp_ratio: float = 4.,
                 attn_drop: float = 0., proj_drop: float = 0., act_layer: Type[nn.Module] = nn.GELU,
                 device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        assert dim % num_heads == 0, f'dim {dim} must be divisible by num_heads {num_heads}'
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1, **dd))
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.mlp_v = DepthwiseConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.norm_v = nn.LayerNorm(dim, **dd)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        heads = (B, N, self.num_heads, C // self.num_heads)
        q = self.q(x).reshape(heads).softmax(dim=1).permute(0, 2, 3, 1)  # B, h, d, N
        k = x.reshape(heads).softmax(dim=1).mean(dim=-1, keepdim=True).transpose(1, 2)  # B, h, N, 1
        attn = self.attn_drop(torch.sigmoid(q @ k) * self.temperature)  # B, h, d, 1
        v = self.norm_v(self.mlp_v(x, H, W)).reshape(heads)
        return (v * attn.permute(0, 3, 1, 2)).reshape(B, N, C)


class FanBlock(nn.Module):
    """Token mixing then channel processing, each a pre-norm residual branch scaled by a layer-scale gamma."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 act_layer: Type[nn.Module] = nn.GELU, norm_layer: Type[nn.Module] = nn.LayerNorm, eta: float = 1.,
                 device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = TokenMixing(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = ChannelProcessing(dim, num_heads, qkv_bias=qkv_bias, mlp_ratio=mlp_ratio, attn_drop=attn_drop,
                                     proj_drop=proj_drop, act_layer=act_layer, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.gamma1 = nn.Parameter(eta * torch.ones(dim, **dd))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim, **dd))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path1(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.gamma2 * self.mlp(self.norm2(x), H, W))
        return x


class Fan(nn.Module):
    """Fully Attentional Network: FAN-ViT (``hybrid_depths=None``) or FAN-Hybrid (ConvNeXt stem)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 8,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            hybrid_depths: Optional[Sequence[int]] = None,
            hybrid_dims: Sequence[int] = (128, 256),
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: Optional[Type[nn.Module]] = None,
            norm_layer: Optional[Type[nn.Module]] = None,
            cls_attn_layers: int = 2,
            use_pos_embed: bool = True,
            eta: float = 1.,
            tokens_norm: bool = True,
            head_init_scale: float = 1.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Nominal input size; it only sets ``patch_embed.grid_size``, any size divisible by 16 works.
            patch_size: Pixels per token of FAN-ViT (16); FAN-Hybrid is always 16.
            hybrid_depths: ConvNeXt blocks per stem stage for FAN-Hybrid; None for FAN-ViT's conv patch embedding.
            hybrid_dims: ConvNeXt stem widths per stage.
            drop_rate: Head dropout.
            pos_drop_rate: Dropout after adding the position encoding.
            proj_drop_rate: Dropout of attention projections and MLP outputs.
            attn_drop_rate: Attention dropout.
            drop_path_rate: Stochastic depth of every FAN block (constant, not increasing with depth, as in FAN).
            eta: Initial value of the layer-scale gammas.
            tokens_norm: Class-attention blocks normalise all tokens (True in every FAN model), not only the class
                token.
            head_init_scale: Scale of the initial classifier weights (0.001 for fan_large_16_p4_hybrid).
            device: Device of the parameters and buffers (as timm's models: ``create_model(..., device='meta')``).
            dtype: Their dtype.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        assert global_pool in ('', 'avg', 'token')
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0  # FAN blocks see patch tokens only; the class token joins for class attention
        self.grad_checkpointing = False

        if hybrid_depths is None:
            self.patch_embed = ConvPatchEmbed(img_size, patch_size, in_chans, embed_dim, act_layer=act_layer, **dd)
        else:
            self.patch_embed = HybridPatchEmbed(img_size, in_chans, embed_dim, hybrid_depths, hybrid_dims, **dd)
        self.pos_embed = PositionalEncodingFourier(hidden_dim=32, dim=embed_dim, temperature=10000, **dd) \
            if use_pos_embed else None
        self.pos_drop = nn.Dropout(pos_drop_rate)

        self.blocks = nn.ModuleList([
            FanBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                     attn_drop=attn_drop_rate, drop_path=drop_path_rate, act_layer=act_layer,
                     norm_layer=norm_layer, eta=eta, **dd)
            for _ in range(depth)
        ])
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.cls_attn_blocks = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, act_layer=act_layer,
                                norm_layer=norm_layer, eta=eta, tokens_norm=tokens_norm, **dd)
            for _ in range(cls_attn_layers)
        ])
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.cls_token, std=.02)
        named_apply(_init_weights, self)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @torch.jit.ignore
    def load_pretrained(self, path: str) -> None:
        """Load a released checkpoint (timm calls this for ``pretrained=True``); non-EMA weights, strict keys."""
        load_pretrained_into(self, path, checkpoint_filter_fn)

    @torch.jit.ignore
    def no_weight_decay(self):
        # Only the class token, as in the official recipe: its list also named 'pos_embed', which matches no
        # parameter name, so the Fourier projection (and the channel temperatures) were trained with weight decay.
        return {'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',
            blocks=r'^blocks\.(\d+)',
            cls_attn_blocks=[(r'^cls_attn_blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        if isinstance(self.patch_embed, HybridPatchEmbed):
            for stage in self.patch_embed.backbone.stages:
                stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('', 'avg', 'token')
            assert global_pool != 'token' or self.cls_token is not None, 'Token pooling needs the class token.'
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x, (H, W) = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(1, H, W).flatten(2).transpose(1, 2)
        return self.pos_drop(x), H, W

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class token and run the class-attention blocks."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.cls_attn_blocks:
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens ``(B, 1 + N, C)``, class token first (``(B, N, C)`` once the head is pruned)."""
        x, H, W = self._embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, H, W)
            else:
                x = block(x, H, W)
        if self.cls_attn_blocks is not None:
            x = self.forward_cls(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, 0 if self.cls_token is None else 1:].mean(dim=1)
        x = self.head_drop(x)
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
        """Outputs of the FAN blocks selected by ``indices`` (last n if int, all if None), and the final features.

        Args:
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last selected block.
            output_fmt: 'NCHW' (token grid as a feature map) or 'NLC' (tokens).
        """
        assert output_fmt in ('NCHW', 'NLC'), 'Output format must be one of NCHW or NLC.'
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, H, W = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, H, W)
            else:
                x = block(x, H, W)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        if output_fmt == 'NCHW':
            intermediates = [y.transpose(1, 2).reshape(y.shape[0], -1, H, W) for y in intermediates]
        if intermediates_only:
            return intermediates
        if self.cls_attn_blocks is not None:
            x = self.forward_cls(x)
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last selected one (and the class-attention head, norm if asked)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.cls_attn_blocks = None
            self.cls_token = None
            self.reset_classifier(0, '')
        return take_indices


def _init_weights(module: nn.Module, name: str = ''):
    """Official FAN initialisation: truncated normal linears, fan-out normal convs in the value MLP, and ConvNeXt's
    truncated normal convs in the hybrid stem (other convs keep PyTorch's default)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d) and '.dwconv.' in f'.{name}':
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d) and name.startswith('patch_embed.backbone.'):
        trunc_normal_(module.weight, std=.02)
        nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Fan) -> Dict[str, torch.Tensor]:
    """Map official FAN / RSPC-FAN checkpoint keys onto `Fan`.

    * a DeiT-style ``{'model': state_dict}`` container is unwrapped (timm's generic loaders pass it whole);
    * ``pos_embeder.*`` (the XCiT/early-FAN name of the Fourier encoding) becomes ``pos_embed.*``, and is dropped for
      a model built with ``use_pos_embed=False``;
    * a fused class-attention ``qkv`` projection is split into timm's ``q``, ``k``, ``v``.
    """
    state_dict = state_dict.get('model', state_dict)
    has_pos_embed = getattr(model, 'pos_embed', None) is not None
    out = {}
    for key, value in state_dict.items():
        if key.startswith('pos_embeder.'):
            key = 'pos_embed.' + key[len('pos_embeder.'):]
        if key.startswith('pos_embed.') and not has_pos_embed:
            continue
        prefix, _, param = key.rpartition('.')
        if prefix.startswith('cls_attn_blocks.') and prefix.endswith('.attn.qkv'):
            base = prefix[:-len('qkv')]
            for name, part in zip('qkv', value.reshape(3, -1, *value.shape[1:]).unbind(0)):
                out[f'{base}{name}.{param}'] = part
            continue
        out[key] = value
    return out


def _create_fan(variant: str, pretrained: bool = False, **kwargs) -> Fan:
    return build_model_with_package_loader(
        Fan, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop('out_indices', 3), feature_cls='getter'),
        **kwargs,
    )


FAN_PAPER = 'Understanding The Robustness in Vision Transformers'


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj.0.0', 'classifier': 'head',
        'custom_load': bool(url),  # released training checkpoints: read by `Fan.load_pretrained`
        **kwargs,
    }


def _fan_cfg(filename: str = '', **kwargs) -> Dict:
    """Original FAN weights (Zhou et al.)."""
    return _cfg(
        FAN_RELEASES + 'v1.0.0/' + filename if filename else '', license=FAN_LICENSE, origin_url=FAN_ORIGIN,
        paper_name=FAN_PAPER, paper_ids='arXiv:2204.12451', **kwargs,
    )


def _rspc_cfg(tag: str, release_path: str, **kwargs) -> Dict:
    """RSPC weights (Guo et al.): FAN-Hybrid trained with RSPC. The RSPC repository is MIT-licensed, but its FAN
    model code is NVIDIA's (non-commercial), so the FAN license applies."""
    return _cfg(
        RSPC_RELEASES + release_path, license=FAN_LICENSE, origin_url=RSPC_ORIGIN,
        paper_name=RSPC_PAPER, paper_ids=RSPC_CVF_URL, notes=paper_notes(tag),
        first_conv='patch_embed.backbone.stem.0', **kwargs,
    )


_HYBRID = dict(first_conv='patch_embed.backbone.stem.0')
_CIFAR = dict(crop_pct=0.875)  # Resize(256) + CenterCrop(224) in the RSPC CIFAR code

default_cfgs = generate_default_cfgs(with_hub_ids({
    # FAN-ViT
    'fan_tiny_12_p16_224.in1k': _fan_cfg('fan_vit_tiny.pth.tar'),
    'fan_small_12_p16_224.in1k': _fan_cfg('fan_vit_small.pth.tar'),
    'fan_base_18_p16_224.in1k': _fan_cfg('fan_vit_base.pth.tar'),
    'fan_large_24_p16_224': _fan_cfg(),  # no weights released

    # FAN-Hybrid: RSPC weights first (the default tag), then the original FAN weights they are compared with
    'fan_tiny_8_p4_hybrid.rspc_in1k': _rspc_cfg('fan_tiny_8_p4_hybrid.rspc_in1k', 'v1.0/rspc_fan_tiny.pth.tar'),
    'fan_tiny_8_p4_hybrid.in1k': _fan_cfg('fan_hybrid_tiny.pth.tar', **_HYBRID),
    'fan_small_12_p4_hybrid.rspc_in1k': _rspc_cfg('fan_small_12_p4_hybrid.rspc_in1k', 'v1.0/rspc_fan_small.pth.tar'),
    'fan_small_12_p4_hybrid.rspc_cifar10': _rspc_cfg(
        'fan_small_12_p4_hybrid.rspc_cifar10', 'v1.1/rspc_fan_small_cifar10.pth.tar',
        num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, **_CIFAR),
    'fan_small_12_p4_hybrid.rspc_cifar100': _rspc_cfg(
        'fan_small_12_p4_hybrid.rspc_cifar100', 'v1.1/rspc_fan_small_cifar100.pth.tar',
        num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD, **_CIFAR),
    'fan_small_12_p4_hybrid.in1k': _fan_cfg('fan_hybrid_small.pth.tar', **_HYBRID),
    'fan_base_16_p4_hybrid.rspc_in1k': _rspc_cfg('fan_base_16_p4_hybrid.rspc_in1k', 'v1.0/rspc_fan_base.pth.tar'),
    'fan_base_16_p4_hybrid.in1k': _fan_cfg('fan_hybrid_base.pth.tar', **_HYBRID),
    'fan_base_16_p4_hybrid.in22k_ft_in1k': _fan_cfg('fan_hybrid_base_in22k_1k.pth.tar', **_HYBRID),
    'fan_base_16_p4_hybrid.in22k_ft_in1k_384': _fan_cfg(
        'fan_hybrid_base_in22k_1k_384.pth.tar', input_size=(3, 384, 384), **_HYBRID),
    'fan_large_16_p4_hybrid.in22k_ft_in1k': _fan_cfg('fan_hybrid_large_in22k_1k.pth.tar', **_HYBRID),
    'fan_large_16_p4_hybrid.in22k_ft_in1k_384': _fan_cfg(
        'fan_hybrid_large_in22k_1k_384.pth.tar', input_size=(3, 384, 384), **_HYBRID),

    # RSPC aliases: the same weights under the short names of the paper
    'fan_t_rspc.rspc_in1k': _rspc_cfg('fan_tiny_8_p4_hybrid.rspc_in1k', 'v1.0/rspc_fan_tiny.pth.tar'),
    'fan_s_rspc.rspc_in1k': _rspc_cfg('fan_small_12_p4_hybrid.rspc_in1k', 'v1.0/rspc_fan_small.pth.tar'),
    'fan_b_rspc.rspc_in1k': _rspc_cfg('fan_base_16_p4_hybrid.rspc_in1k', 'v1.0/rspc_fan_base.pth.tar'),
}))

# Architectures (width / FAN blocks / heads) of the official code; all use qkv bias, MLP ratio 4 and eta 1.0.
_FAN_VIT_ARGS = {
    'fan_tiny_12_p16_224': dict(embed_dim=192, depth=12, num_heads=4),
    'fan_small_12_p16_224': dict(embed_dim=384, depth=12, num_heads=8),
    'fan_base_18_p16_224': dict(embed_dim=448, depth=18, num_heads=8),
    'fan_large_24_p16_224': dict(embed_dim=480, depth=24, num_heads=10),
}
_FAN_HYBRID_ARGS = {
    'fan_tiny_8_p4_hybrid': dict(embed_dim=192, depth=8, num_heads=8, hybrid_depths=(3, 3)),
    'fan_small_12_p4_hybrid': dict(embed_dim=384, depth=10, num_heads=8, hybrid_depths=(3, 3)),  # 10, not 12
    'fan_base_16_p4_hybrid': dict(embed_dim=448, depth=16, num_heads=8, hybrid_depths=(3, 3)),
    'fan_large_16_p4_hybrid': dict(
        embed_dim=480, depth=22, num_heads=10, hybrid_depths=(3, 5), head_init_scale=0.001),
}


def _fan(variant: str, pretrained: bool, arch: Optional[str] = None, **kwargs) -> Fan:
    """Build ``variant`` with the architecture of ``arch`` (default: the variant itself; aliases name theirs)."""
    arch = arch or variant
    model_args = _FAN_VIT_ARGS.get(arch) or _FAN_HYBRID_ARGS[arch]
    return _create_fan(variant, pretrained=pretrained, **{**model_args, **kwargs})


@register_model
def fan_tiny_12_p16_224(pretrained=False, **kwargs) -> Fan:
    """FAN-T-ViT: 192 wide, 12 FAN blocks, 4 heads, conv patch embedding."""
    return _fan('fan_tiny_12_p16_224', pretrained, **kwargs)


@register_model
def fan_small_12_p16_224(pretrained=False, **kwargs) -> Fan:
    """FAN-S-ViT: 384 wide, 12 FAN blocks, 8 heads."""
    return _fan('fan_small_12_p16_224', pretrained, **kwargs)


@register_model
def fan_base_18_p16_224(pretrained=False, **kwargs) -> Fan:
    """FAN-B-ViT: 448 wide, 18 FAN blocks, 8 heads."""
    return _fan('fan_base_18_p16_224', pretrained, **kwargs)


@register_model
def fan_large_24_p16_224(pretrained=False, **kwargs) -> Fan:
    """FAN-L-ViT: 480 wide, 24 FAN blocks, 10 heads (no released weights)."""
    return _fan('fan_large_24_p16_224', pretrained, **kwargs)


@register_model
def fan_tiny_8_p4_hybrid(pretrained=False, **kwargs) -> Fan:
    """FAN-T-Hybrid: ConvNeXt stem (3+3 blocks), 192 wide, 8 FAN blocks, 8 heads."""
    return _fan('fan_tiny_8_p4_hybrid', pretrained, **kwargs)


@register_model
def fan_small_12_p4_hybrid(pretrained=False, **kwargs) -> Fan:
    """FAN-S-Hybrid: ConvNeXt stem (3+3 blocks), 384 wide, 10 FAN blocks (despite the name), 8 heads."""
    return _fan('fan_small_12_p4_hybrid', pretrained, **kwargs)


@register_model
def fan_base_16_p4_hybrid(pretrained=False, **kwargs) -> Fan:
    """FAN-B-Hybrid: ConvNeXt stem (3+3 blocks), 448 wide, 16 FAN blocks, 8 heads."""
    return _fan('fan_base_16_p4_hybrid', pretrained, **kwargs)


@register_model
def fan_large_16_p4_hybrid(pretrained=False, **kwargs) -> Fan:
    """FAN-L-Hybrid: ConvNeXt stem (3+5 blocks), 480 wide, 22 FAN blocks, 10 heads."""
    return _fan('fan_large_16_p4_hybrid', pretrained, **kwargs)


@register_model
def fan_t_rspc(pretrained=False, **kwargs) -> Fan:
    """RSPC-FAN-T: `fan_tiny_8_p4_hybrid` with the RSPC ImageNet weights."""
    return _fan('fan_t_rspc', pretrained, arch='fan_tiny_8_p4_hybrid', **kwargs)


@register_model
def fan_s_rspc(pretrained=False, **kwargs) -> Fan:
    """RSPC-FAN-S: `fan_small_12_p4_hybrid` with the RSPC ImageNet weights."""
    return _fan('fan_s_rspc', pretrained, arch='fan_small_12_p4_hybrid', **kwargs)


@register_model
def fan_b_rspc(pretrained=False, **kwargs) -> Fan:
    """RSPC-FAN-B: `fan_base_16_p4_hybrid` with the RSPC ImageNet weights."""
    return _fan('fan_b_rspc', pretrained, arch='fan_base_16_p4_hybrid', **kwargs)
