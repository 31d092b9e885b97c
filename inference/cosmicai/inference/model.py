"""The AstroMAE redshift model in plain PyTorch.

Three branches read one galaxy: a ViT encoder (MAE-pretrained in the published model) over the
5-band 32x32 image, an inception CNN over the same image, and an MLP over the 5 magnitudes. Their
features are concatenated and a small head predicts one redshift per sample.

Parameter names follow the published model so its weights map by prefix: the encoder lives in
`vit` with timm VisionTransformer names (`vit.patch_embed.proj`, `vit.cls_token`, `vit.pos_embed`,
`vit.blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `vit.fc_norm`, `vit.head`), and
the `inception`, `magnitude`, `vit_mlp` and `head` sequences keep the published layer indices.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_BLOCKS = 5  # the last one has no 5x5 branch
POOL_BEFORE_BLOCK = (0, 2, 4)  # a 2x2 average pool precedes these inception blocks
INCEPTION_POOLS = len(POOL_BEFORE_BLOCK)


@dataclass(frozen=True)
class AstroMAEConfig:
    """Every size of the model. The defaults are the published AstroMAE."""

    img_size: int = 32
    in_chans: int = 5  # image bands; also the number of magnitudes (one per band)
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    feature_dim: int = 1096  # width of the ViT and inception feature vectors
    inception_stem: int = 32  # channels of the 1x1 stem conv
    inception_widths: tuple[int, ...] = (16, 16, 8, 8, 4)  # per-branch width of each block
    mag_dim: int = 1024
    mag_layers: int = 4  # Linear mag_dim->mag_dim layers after the input layer
    head_dim: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "inception_widths", tuple(self.inception_widths))
        fields = dataclasses.fields(self)
        sizes = [(f.name, getattr(self, f.name)) for f in fields if f.type == "int"]
        sizes += [(f"inception_widths[{i}]", w) for i, w in enumerate(self.inception_widths)]
        for name, value in sizes:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AstroMAEConfig.{name} must be a positive integer, got {value!r}")
        if len(self.inception_widths) != INCEPTION_BLOCKS:
            raise ValueError(
                f"AstroMAEConfig.inception_widths needs {INCEPTION_BLOCKS} widths, "
                f"got {len(self.inception_widths)}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"AstroMAEConfig.embed_dim ({self.embed_dim}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.img_size % self.patch_size or self.img_size % 2**INCEPTION_POOLS:
            raise ValueError(
                f"AstroMAEConfig.img_size ({self.img_size}) must be divisible by patch_size "
                f"({self.patch_size}) and by {2**INCEPTION_POOLS}"
            )
        if not self.norm_eps > 0 or not int(self.embed_dim * self.mlp_ratio) >= 1:
            raise ValueError(
                f"AstroMAEConfig.norm_eps ({self.norm_eps}) must be positive and mlp_ratio "
                f"({self.mlp_ratio}) must give an MLP at least 1 wide"
            )

    @classmethod
    def tiny(cls) -> AstroMAEConfig:
        """The same structure with small widths (about 20k parameters), for tests."""
        return cls(
            embed_dim=16,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            feature_dim=32,
            inception_stem=8,
            inception_widths=(4, 4, 2, 2, 2),
            mag_dim=32,
            mag_layers=2,
            head_dim=32,
        )

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def inception_flat_dim(self) -> int:
        """Length of the flattened inception output (the last block has 3 branches)."""
        side: int = self.img_size // 2**INCEPTION_POOLS  # int ** int is Any to mypy
        return 3 * self.inception_widths[-1] * side * side

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["inception_widths"] = list(self.inception_widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AstroMAEConfig:
        """Inverse of `to_dict`; unknown keys are an error, missing keys take the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AstroMAEConfig key(s): {', '.join(unknown)}")
        return cls(**data)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (timm's `patch_embed.proj`)."""

    def __init__(self, config: AstroMAEConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_chans,
            config.embed_dim,
            kernel_size=config.patch_size,
            stride=config.patch_size,
        )

    def forward(self, images: Tensor) -> Tensor:
        patches: Tensor = self.proj(images)
        return patches.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused, biased qkv projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        out: Tensor = self.proj(x.transpose(1, 2).reshape(n, t, d))
        return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: AstroMAEConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.attn = Attention(config.embed_dim, config.num_heads)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.mlp = Mlp(config.embed_dim, config.mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class ViTEncoder(nn.Module):
    """ViT over the image; mean of the patch tokens (not the class token) -> fc_norm -> head."""

    def __init__(self, config: AstroMAEConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.fc_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, dim)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.head(self.fc_norm(x[:, 1:].mean(dim=1)))
        return out


class ConvBNReLU(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Branches 1x1; 1x1->3x3; 1x1->5x5 (optional); maxpool 3x3 ->1x1; outputs concatenated."""

    def __init__(self, in_ch: int, width: int, with_5x5: bool = True) -> None:
        super().__init__()
        self.branch1 = ConvBNReLU(in_ch, width, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(in_ch, width, 1), ConvBNReLU(width, width, 3))
        self.branch3 = (
            nn.Sequential(ConvBNReLU(in_ch, width, 1), ConvBNReLU(width, width, 5))
            if with_5x5
            else None
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1), ConvBNReLU(in_ch, width, 1)
        )
        self.out_channels = width * (4 if with_5x5 else 3)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1, self.branch2, self.branch3, self.branch4]
        return torch.cat([branch(x) for branch in branches if branch is not None], dim=1)


def _inception_branch(config: AstroMAEConfig) -> nn.Sequential:
    """Stem 1x1 conv, pool, 2 blocks, pool, 2 blocks, pool, last block, flatten, MLP."""
    layers: list[nn.Module] = [nn.Conv2d(config.in_chans, config.inception_stem, kernel_size=1)]
    in_ch = config.inception_stem
    for i, width in enumerate(config.inception_widths):
        if i in POOL_BEFORE_BLOCK:
            layers.append(nn.AvgPool2d(2))
        block = InceptionBlock(in_ch, width, with_5x5=i < INCEPTION_BLOCKS - 1)
        layers.append(block)
        in_ch = block.out_channels
    layers += [
        nn.Flatten(),
        nn.Linear(config.inception_flat_dim, config.feature_dim),
        nn.ReLU(),
        nn.Linear(config.feature_dim, config.feature_dim),
    ]
    return nn.Sequential(*layers)


def _magnitude_branch(config: AstroMAEConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(config.in_chans, config.mag_dim)]
    for _ in range(config.mag_layers):
        layers += [nn.ReLU(), nn.Linear(config.mag_dim, config.mag_dim)]
    return nn.Sequential(*layers)


class AstroMAE(nn.Module):
    """AstroMAE: (images [N,C,H,W], magnitudes [N,C]) -> redshift [N]."""

    def __init__(self, config: AstroMAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AstroMAEConfig()
        self.vit = ViTEncoder(config)
        self.vit_mlp = nn.Sequential(
            nn.Linear(config.embed_dim, config.feature_dim),
            nn.ReLU(),
            nn.Linear(config.feature_dim, config.feature_dim),
        )
        self.inception = _inception_branch(config)
        self.magnitude = _magnitude_branch(config)
        self.head = nn.Sequential(
            nn.Linear(2 * config.feature_dim + config.mag_dim, config.head_dim),
            nn.ReLU(),
            nn.Linear(config.head_dim, 1),
        )

    def forward(self, images: Tensor, magnitudes: Tensor) -> Tensor:
        self._check_inputs(images, magnitudes)
        features = torch.cat(
            (self.vit_mlp(self.vit(images)), self.inception(images), self.magnitude(magnitudes)),
            dim=1,
        )
        out: Tensor = self.head(features)
        return out[:, 0]

    def _check_inputs(self, images: Tensor, magnitudes: Tensor) -> None:
        c, s = self.config.in_chans, self.config.img_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(
                f"AstroMAE expects images of shape [N, {c}, {s}, {s}], got {list(images.shape)}"
            )
        if magnitudes.dim() != 2 or magnitudes.shape[1] != c:
            raise ValueError(
                f"AstroMAE expects magnitudes of shape [N, {c}], got {list(magnitudes.shape)}"
            )
        if images.shape[0] != magnitudes.shape[0]:
            raise ValueError(
                f"AstroMAE got {images.shape[0]} images but {magnitudes.shape[0]} magnitude rows"
            )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _initialize(model: AstroMAE, generator: torch.Generator) -> None:
    """PyTorch's default init (U(+-1/sqrt(fan_in))) drawn from `generator`; tokens ~ N(0, .02)."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            if module.bias is not None:  # every layer here has one
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
            module.reset_parameters()
    for token in (model.vit.cls_token, model.vit.pos_embed):
        nn.init.trunc_normal_(token, std=0.02, generator=generator)


def build_model(config: AstroMAEConfig, seed: int = 0) -> AstroMAE:
    """A randomly initialised AstroMAE; the same seed gives identical weights.

    The weights come from a local generator: the global torch RNG is neither read nor advanced.
    """
    with torch.device("meta"):
        model = AstroMAE(config)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _initialize(model, generator)
    return model


def flops_per_sample(config: AstroMAEConfig) -> float:
    """Analytic FLOPs of one forward pass: 2 x multiply-adds of convs, linears and attention.

    Norms, activations, pooling and additions are not counted (as in FlopCounterMode).
    """
    c = config
    tokens = c.num_patches + 1
    d, hidden = c.embed_dim, c.mlp_hidden

    def conv(pixels: int, in_ch: int, out_ch: int, kernel: int) -> int:
        return pixels * in_ch * out_ch * kernel * kernel

    vit = conv(c.num_patches, c.in_chans, d, c.patch_size)
    per_block = tokens * (3 * d * d + d * d + 2 * d * hidden) + 2 * tokens * tokens * d
    vit += c.depth * per_block + d * d + d * c.feature_dim + c.feature_dim**2

    side = c.img_size
    inception = conv(side * side, c.in_chans, c.inception_stem, 1)
    in_ch = c.inception_stem
    for i, width in enumerate(c.inception_widths):
        if i in POOL_BEFORE_BLOCK:
            side //= 2
        has_5x5 = i < INCEPTION_BLOCKS - 1
        pixels = side * side
        inception += conv(pixels, in_ch, width, 1) * (4 if has_5x5 else 3)
        inception += conv(pixels, width, width, 3)
        if has_5x5:
            inception += conv(pixels, width, width, 5)
        in_ch = width * (4 if has_5x5 else 3)
    inception += c.inception_flat_dim * c.feature_dim + c.feature_dim**2

    magnitude = c.in_chans * c.mag_dim + c.mag_layers * c.mag_dim**2
    head = (2 * c.feature_dim + c.mag_dim) * c.head_dim + c.head_dim
    return 2.0 * (vit + inception + magnitude + head)
