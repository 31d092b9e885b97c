"""The timm 0.4.12 shim (cosmicai.compat) that reference scripts see on their PYTHONPATH.

The shim runs where scripts run: in a child interpreter with its folder on the path, never
imported into this process (where no `timm` must resolve).
"""

from __future__ import annotations

import json
import os
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cosmicai.compat import timm_pythonpath
from cosmicai.pipeline.executor import _script_pythonpath

SHIM = timm_pythonpath()

# The reference's model code builds its encoder from timm parts (as MAE does) and runs it as
# ViT_Astro.forward does; our AstroMAE's `vit` has the same names and must compute the same.
REFERENCE_VIT = """
import json, sys
from functools import partial
import torch
from torch import nn
from timm.models.vision_transformer import Block, PatchEmbed, VisionTransformer
from cosmicai.inference.model import AstroMAE, AstroMAEConfig

c = AstroMAEConfig.tiny()
norm = partial(nn.LayerNorm, eps=c.norm_eps)

class ReferenceViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.embed_dim))
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(c.depth)
        )
        self.fc_norm = norm(c.embed_dim)
        self.head = nn.Linear(c.embed_dim, c.embed_dim)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.fc_norm(x[:, 1:, :].mean(dim=1)))

torch.manual_seed(0)
ours = AstroMAE(c).vit.eval()
with torch.no_grad():
    for p in ours.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
reference = ReferenceViT().eval()
reference.load_state_dict(ours.state_dict())
vit = VisionTransformer(
    img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=0,
    embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
    norm_layer=norm,
).eval()
vit.blocks.load_state_dict(ours.blocks.state_dict())
images = torch.randn(3, c.in_chans, c.img_size, c.img_size)
tokens = torch.randn(3, c.num_patches + 1, c.embed_dim)
with torch.no_grad():
    def block_diffs(blocks):
        return [(a(tokens) - b(tokens)).abs().max().item() for a, b in zip(blocks, ours.blocks)]
    print(json.dumps({
        "reference_names": [n for n, _ in reference.named_parameters()],
        "our_names": [n for n, _ in ours.named_parameters()],
        "block_diffs": block_diffs(reference.blocks),
        "vit_diff": (reference(images) - ours(images)).abs().max().item(),
        "vision_transformer_diffs": block_diffs(vit.blocks),
        "vision_transformer_out": list(vit(images).shape),
    }))
"""

SAVE = """
import sys
import torch
from torch import nn
from timm.models.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block

torch.manual_seed(0)
model = nn.Sequential(
    PatchEmbed(img_size=8, patch_size=4, in_chans=2, embed_dim=8),
    Block(8, num_heads=2, mlp_ratio=2.0, qkv_bias=True),
    Mlp(8, hidden_features=4),
).eval()
torch.save(nn.DataParallel(model), sys.argv[1])
x = torch.randn(2, 2, 8, 8)
torch.save({"x": x, "y": model(x).detach()}, sys.argv[2])
"""

LOAD = """
import sys
import torch
wrapped = torch.load(sys.argv[1], weights_only=False)
io = torch.load(sys.argv[2])
names = [type(m).__module__ + "." + type(m).__name__ for m in wrapped.module.modules()]
with torch.no_grad():
    diff = (wrapped.module(io["x"]) - io["y"]).abs().max().item()
print(diff, " ".join(names))
"""


def _python(code: str, *args: str, pythonpath: str = str(SHIM)) -> str:
    """Run `code` in a fresh interpreter with `pythonpath`; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_reference_vit_from_shim_matches_our_encoder() -> None:
    result = json.loads(_python(REFERENCE_VIT))
    assert result["reference_names"] == result["our_names"]
    assert "blocks.1.attn.qkv.bias" in result["our_names"]
    assert max(result["block_diffs"]) < 1e-6
    assert result["vit_diff"] < 1e-6
    assert max(result["vision_transformer_diffs"]) < 1e-6
    assert result["vision_transformer_out"] == [3, 16]  # num_classes=0: the pooled features


def test_pickled_shim_model_loads_and_runs_in_a_fresh_process(tmp_path: Path) -> None:
    model, io = tmp_path / "model.pt", tmp_path / "io.pt"
    _python(SAVE, str(model), str(io))
    with zipfile.ZipFile(model) as archive:
        pickle_name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        ops = pickletools.genops(archive.read(pickle_name))
        globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}  # "module name"
    for name in (
        "timm.models.vision_transformer Block",
        "timm.models.vision_transformer Attention",
        "timm.models.layers.mlp Mlp",
        "timm.models.layers.patch_embed PatchEmbed",
    ):  # the module paths the published checkpoint's pickle names
        assert name in globals_
    diff, names = _python(LOAD, str(model), str(io)).split(" ", 1)
    assert float(diff) == 0.0
    assert "timm.models.layers.patch_embed.PatchEmbed" in names.split()
    assert "timm.models.vision_transformer.Attention" in names.split()


def test_shim_goes_after_the_scripts_own_entries(tmp_path: Path) -> None:
    script = tmp_path / "Inference" / "inference.py"
    script.parent.mkdir()
    own = str(tmp_path / "mine")
    path = _script_pythonpath(own, tmp_path, script).split(os.pathsep)
    assert path.index(own) < path.index(str(SHIM)) == len(path) - 1
    imports = "from timm.models.vision_transformer import Block; print(Block.__module__)"
    shown = _python(imports, pythonpath=os.pathsep.join(path))
    assert shown.strip() == "timm.models.vision_transformer"


@pytest.mark.parametrize("where", ["code", "beside"])
def test_a_bundled_timm_is_not_shadowed(tmp_path: Path, where: str) -> None:
    script = tmp_path / "Inference" / "inference.py"
    (script.parent / "timm" if where == "beside" else tmp_path / "timm").mkdir(parents=True)
    assert str(SHIM) not in _script_pythonpath(None, tmp_path, script).split(os.pathsep)


def test_an_old_pickled_gelu_runs_as_exact_gelu() -> None:
    """torch < 1.12 pickled nn.GELU without `approximate`; the shim's Mlp restores it."""
    code = """
import pickle, torch
from timm.models.layers import Mlp
mlp = Mlp(4, hidden_features=8).eval()
x = torch.randn(3, 4)
expected = mlp(x)
del mlp.act.approximate  # as an old torch pickled it
restored = pickle.loads(pickle.dumps(mlp))
print((restored(x) - expected).abs().max().item())
"""
    assert float(_python(code)) == 0.0
