"""Compatibility shim for reference scripts, not timm: timm 0.4.12's Vision Transformer.

Attention, Block and VisionTransformer keep timm 0.4.12's constructor signatures, attribute
names and forward computations (explicit softmax attention, pre-norm blocks), so models built
from them have timm's parameter names and a pickled timm model unpickles into them and runs.
VisionTransformer supports weight_init '' and 'nlhb' (the same init there); the 'jax' modes
and timm's pretrained-model registry are not provided.
"""

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from .layers import DropPath, Mlp, PatchEmbed, trunc_normal_

__all__ = ["Attention", "Block", "DropPath", "Mlp", "PatchEmbed", "VisionTransformer"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.mlp = Mlp(
            in_features=dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Vision Transformer (and DeiT with `distilled=True`), as in timm 0.4.12."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        representation_size: int | None = None,
        distilled: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: type[nn.Module] | None = None,
        weight_init: str = "",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 2 if distilled else 1
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.patch_embed = embed_layer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]  # stochastic depth
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                    drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i],
                    norm_layer=norm_layer, act_layer=act_layer,
                )
                for i in range(depth)
            ]
        )  # fmt: skip
        self.norm = norm_layer(embed_dim)
        self.pre_logits: nn.Module = nn.Identity()
        if representation_size and not distilled:
            self.num_features = representation_size
            self.pre_logits = nn.Sequential(
                OrderedDict([("fc", nn.Linear(embed_dim, representation_size)), ("act", nn.Tanh())])
            )
        self.head = self._classifier(self.num_features)
        self.head_dist = self._classifier(self.embed_dim) if distilled else None
        self.init_weights(weight_init)

    def _classifier(self, features: int) -> nn.Module:
        return nn.Linear(features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def init_weights(self, mode: str = "") -> None:
        """timm's default init: tokens ~ trunc N(0, .02), Linear weights too, zero biases."""
        if mode not in ("", "nlhb"):
            raise NotImplementedError(
                f"weight_init={mode!r}: this timm shim (cosmicai.compat) implements only '' and "
                "'nlhb'; bundle a real timm 0.4.12 beside your script for the jax modes"
            )
        trunc_normal_(self.pos_embed, std=0.02)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_vit_weights)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def forward_features(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = self.patch_embed(x)
        tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = self.pos_drop(torch.cat((*tokens, x), dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        if self.dist_token is None:
            return self.pre_logits(x[:, 0])
        return x[:, 0], x[:, 1]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = self.forward_features(x)
        if self.head_dist is None:
            return self.head(features)
        x, x_dist = self.head(features[0]), self.head_dist(features[1])
        if self.training and not torch.jit.is_scripting():
            return x, x_dist  # in inference, the average of both classifiers' predictions
        return (x + x_dist) / 2


def _init_vit_weights(module: nn.Module) -> None:
    """timm 0.4.12's `_init_vit_weights` as `self.apply` calls it (no head special case)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.BatchNorm2d):
        nn.init.zeros_(module.bias)
        nn.init.ones_(module.weight)
