"""AstroMAE: shapes, sizes, FLOPs, deterministic construction and an independent forward pass."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cosmicai.inference.model import (
    AstroMAE,
    AstroMAEConfig,
    build_model,
    count_parameters,
    flops_per_sample,
)

TINY = AstroMAEConfig.tiny()


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, 32, 32, generator=gen), torch.randn(n, 5, generator=gen) + 18.0


@pytest.fixture(scope="module")
def tiny_model() -> AstroMAE:
    model = build_model(TINY, seed=7).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the eval-mode BN is exercised
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model


def test_forward_shape_one_redshift_per_sample(tiny_model: AstroMAE) -> None:
    for n in (1, 4):
        images, mags = _inputs(n)
        with torch.no_grad():
            out = tiny_model(images, mags)
        assert out.shape == (n,) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("images", "mags", "message"),
    [
        ((2, 4, 32, 32), (2, 5), r"images of shape \[N, 5, 32, 32\], got \[2, 4, 32, 32\]"),
        ((2, 5, 16, 16), (2, 5), r"images of shape"),
        ((5, 32, 32), (1, 5), r"images of shape"),
        ((2, 5, 32, 32), (2, 4), r"magnitudes of shape \[N, 5\], got \[2, 4\]"),
        ((2, 5, 32, 32), (10,), r"magnitudes of shape"),
        ((2, 5, 32, 32), (3, 5), r"2 images but 3 magnitude rows"),
    ],
)
def test_forward_rejects_bad_shapes(
    tiny_model: AstroMAE, images: tuple[int, ...], mags: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.zeros(images), torch.zeros(mags))


def test_batch_composition_does_not_change_outputs(tiny_model: AstroMAE) -> None:
    images, mags = _inputs(5, seed=3)
    with torch.no_grad():
        batched = tiny_model(images, mags)
        single = torch.cat([tiny_model(images[i : i + 1], mags[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def _reference_forward(
    sd: dict[str, torch.Tensor], c: AstroMAEConfig, images: torch.Tensor, mags: torch.Tensor
) -> torch.Tensor:
    """AstroMAE written out from FACTS.md with functional ops, reading the state_dict."""

    def lin(x: torch.Tensor, p: str) -> torch.Tensor:
        return x @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]

    def ln(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)

    def cbr(x: torch.Tensor, p: str, pad: int) -> torch.Tensor:
        x = F.conv2d(x, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=pad)
        x = F.batch_norm(
            x,
            sd[f"{p}.bn.running_mean"],
            sd[f"{p}.bn.running_var"],
            sd[f"{p}.bn.weight"],
            sd[f"{p}.bn.bias"],
            training=False,
            eps=1e-5,
        )
        return F.relu(x)

    def inception(x: torch.Tensor, p: str, with_5x5: bool) -> torch.Tensor:
        outs = [cbr(x, f"{p}.branch1", 0), cbr(cbr(x, f"{p}.branch2.0", 0), f"{p}.branch2.1", 1)]
        if with_5x5:
            outs.append(cbr(cbr(x, f"{p}.branch3.0", 0), f"{p}.branch3.1", 2))
        outs.append(cbr(F.max_pool2d(x, 3, stride=1, padding=1), f"{p}.branch4.1", 0))
        return torch.cat(outs, dim=1)

    n, d, heads = images.shape[0], c.embed_dim, c.num_heads
    hd = d // heads
    # ViT: patches, class token, positions, pre-norm blocks, mean of patch tokens, fc_norm, head
    x = (
        F.conv2d(
            images,
            sd["vit.patch_embed.proj.weight"],
            sd["vit.patch_embed.proj.bias"],
            stride=c.patch_size,
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([sd["vit.cls_token"].expand(n, 1, d), x], dim=1) + sd["vit.pos_embed"]
    for b in range(c.depth):
        p = f"vit.blocks.{b}"
        qkv = lin(ln(x, f"{p}.norm1"), f"{p}.attn.qkv")
        per_head = []
        for h in range(heads):
            q, k, v = (qkv[..., j * d + h * hd : j * d + (h + 1) * hd] for j in range(3))
            weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1)
            per_head.append(weights @ v)
        x = x + lin(torch.cat(per_head, dim=-1), f"{p}.attn.proj")
        hidden = F.gelu(lin(ln(x, f"{p}.norm2"), f"{p}.mlp.fc1"))
        x = x + lin(hidden, f"{p}.mlp.fc2")
    vit = lin(ln(x[:, 1:].mean(dim=1), "vit.fc_norm"), "vit.head")
    vit = lin(F.relu(lin(vit, "vit_mlp.0")), "vit_mlp.2")
    # inception: stem, pool, 2 blocks, pool, 2 blocks, pool, 3-branch block, flatten, MLP
    y = F.avg_pool2d(F.conv2d(images, sd["inception.0.weight"], sd["inception.0.bias"]), 2)
    y = inception(inception(y, "inception.2", True), "inception.3", True)
    y = inception(inception(F.avg_pool2d(y, 2), "inception.5", True), "inception.6", True)
    y = inception(F.avg_pool2d(y, 2), "inception.8", False).flatten(1)
    y = lin(F.relu(lin(y, "inception.10")), "inception.12")
    # magnitudes: Linear, then (ReLU, Linear) x mag_layers
    m = lin(mags, "magnitude.0")
    for i in range(c.mag_layers):
        m = lin(F.relu(m), f"magnitude.{2 * i + 2}")
    z = torch.cat([vit, y, m], dim=1)
    return lin(F.relu(lin(z, "head.0")), "head.2")[:, 0]


def test_matches_independent_reference_forward(tiny_model: AstroMAE) -> None:
    images, mags = _inputs(3, seed=11)
    sd = tiny_model.state_dict()
    assert "inception.8.branch3.0.conv.weight" not in sd  # the last block has no 5x5 branch
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_model(images, mags),
            _reference_forward(sd, TINY, images, mags),
            rtol=1e-4,
            atol=1e-5,
        )


def test_encoder_keys_follow_timm_vision_transformer(tiny_model: AstroMAE) -> None:
    per_block = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ]
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
        "head.bias",
    }
    expected |= {f"blocks.{b}.{k}" for b in range(TINY.depth) for k in per_block}
    assert set(tiny_model.vit.state_dict()) == expected
    sd = tiny_model.state_dict()
    assert sd["vit.pos_embed"].shape == (1, 65, TINY.embed_dim)
    assert sd["vit.blocks.0.attn.qkv.weight"].shape == (3 * TINY.embed_dim, TINY.embed_dim)
    assert sd["vit.patch_embed.proj.weight"].shape == (TINY.embed_dim, 5, 4, 4)


def test_published_parameter_count() -> None:
    with torch.device("meta"):
        model = AstroMAE(AstroMAEConfig())
    # Hand arithmetic from FACTS.md (weights + biases; LayerNorm and BatchNorm weight + bias)
    norms = 2 * (192 + 192)
    block = norms + (192 * 576 + 576) + (192 * 192 + 192) + (192 * 768 + 768) + (768 * 192 + 192)
    vit = (5 * 192 * 16 + 192) + 192 + 65 * 192 + 12 * block + 2 * 192 + (192 * 192 + 192)
    vit_mlp = (192 * 1096 + 1096) + (1096 * 1096 + 1096)

    def conv_bn(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout + 2 * cout

    def block4(cin: int, w: int) -> int:
        return 4 * conv_bn(cin, w, 1) + conv_bn(w, w, 3) + conv_bn(w, w, 5)

    last = 3 * conv_bn(32, 4, 1) + conv_bn(4, 4, 3)
    inception = (5 * 32 + 32) + block4(32, 16) + block4(64, 16) + block4(64, 8) + block4(32, 8)
    inception += last + (192 * 1096 + 1096) + (1096 * 1096 + 1096)
    magnitude = (5 * 1024 + 1024) + 4 * (1024 * 1024 + 1024)
    head = (3216 * 1024 + 1024) + (1024 + 1)
    expected = vit + vit_mlp + inception + magnitude + head
    assert expected == 15_764_097
    assert count_parameters(model) == expected
    assert 15_000_000 <= count_parameters(model) <= 16_500_000


def test_tiny_config_is_small() -> None:
    assert 1_000 <= count_parameters(build_model(TINY)) <= 100_000


@pytest.mark.parametrize("config", [TINY, AstroMAEConfig()], ids=["tiny", "published"])
def test_flops_match_flop_counter(config: AstroMAEConfig) -> None:
    model = build_model(config).eval()
    images, mags = _inputs(1)
    # the math backend runs attention as matmuls, which FlopCounterMode counts
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(images, mags)
    assert flops_per_sample(config) == pytest.approx(fc.get_total_flops(), rel=0.02)


def test_published_flops_about_three_quarters_gflop() -> None:
    assert 0.70e9 <= flops_per_sample(AstroMAEConfig()) <= 0.80e9


def test_build_model_is_deterministic_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a, b, c = build_model(TINY, seed=3), build_model(TINY, seed=3), build_model(TINY, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["vit.blocks.0.attn.qkv.weight"], sc["vit.blocks.0.attn.qkv.weight"])
    assert not torch.equal(sa["magnitude.0.weight"], sc["magnitude.0.weight"])
    assert not any(t.is_meta for t in sa.values())


def test_config_dict_round_trip() -> None:
    for config in (TINY, AstroMAEConfig()):
        data = json.loads(json.dumps(config.to_dict()))
        assert AstroMAEConfig.from_dict(data) == config
    assert AstroMAEConfig.from_dict({}) == AstroMAEConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"embed_dims": 16}, "unknown AstroMAEConfig key.*embed_dims"),
        ({"embed_dim": 100}, "divisible by num_heads"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"inception_widths": [4, 4]}, "needs 5 widths"),
        ({"img_size": 36}, "divisible by patch_size"),
    ],
)
def test_config_validation(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AstroMAEConfig.from_dict(data)
