"""`cosmicai model import` and the safe whole-model-pickle path, on a published-style fixture.

The fixture is pickled like the published checkpoint, torch.save(DataParallel(ViT_Astro(...))),
with classes named like the reference code's and timm's (`blocks.model_vit_inception.ViT_Astro`,
`timm.models.vision_transformer.Block`, ...). Those fake modules are importable only while the
fixture is saved; everything else runs with no `blocks` or `timm` importable.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import pickletools
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
import torch
from moto import mock_aws
from torch import nn

from cosmicai.cli.main import main
from cosmicai.errors import CheckpointError
from cosmicai.inference import model as ours
from cosmicai.inference.checkpoint import load_model
from cosmicai.inference.model import AstroMAE, AstroMAEConfig, build_model, count_parameters
from cosmicai.inference.partition_io import write_partition
from cosmicai.inference.reference_checkpoint import read_pickled_model, to_our_names
from cosmicai.pipeline.executor import RankTask, run_engine

TINY = AstroMAEConfig.tiny()
SHELL = '''from torch import nn


class {name}(nn.Module):
    """Test-only class named like the reference code's: it holds the children it is given."""

    def __init__(self, **children):
        super().__init__()
        for key, value in children.items():
            setattr(self, key, value)
'''
FAKE_MODULES = {
    "blocks.model_vit_inception": ("ViT_Astro",),
    "blocks.photoz": ("Input_Mix_Model", "InceptionBlock", "ConvBlock"),
    "timm.models.vision_transformer": ("Block", "Attention"),
    "timm.models.layers.mlp": ("Mlp",),
    "timm.models.layers.patch_embed": ("PatchEmbed",),
}
# our class -> (fake module, class) it is pickled as
RETYPED = {
    ours.PatchEmbed: ("timm.models.layers.patch_embed", "PatchEmbed"),
    ours.Attention: ("timm.models.vision_transformer", "Attention"),
    ours.Mlp: ("timm.models.layers.mlp", "Mlp"),
    ours.Block: ("timm.models.vision_transformer", "Block"),
    ours.ConvBNReLU: ("blocks.photoz", "ConvBlock"),
    ours.InceptionBlock: ("blocks.photoz", "InceptionBlock"),
}
DROPPED_PREFIXES = ("inception_model.conv2d_init.", "inception_model.vis_inception.8.branch3.")


class CreatesFileWhenUnpickled:
    """Unpickling it normally runs open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.marker, "w")


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@contextmanager
def fake_reference_code(root: Path) -> Iterator[Callable[[str, str], type[nn.Module]]]:
    """Make `blocks` and a fake `timm` importable from `root`, only inside the block."""
    assert not _importable("blocks") and not _importable("timm")
    for module, names in FAKE_MODULES.items():
        parts = module.split(".")
        for depth in range(1, len(parts)):
            package = root.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
        source = "\n\n".join(SHELL.format(name=name) for name in names)
        root.joinpath(*parts).with_suffix(".py").write_text(source)
    sys.path.insert(0, str(root))
    try:
        yield lambda module, name: getattr(importlib.import_module(module), name)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.split(".")[0] in ("blocks", "timm")]:
            del sys.modules[name]
        importlib.invalidate_caches()
    assert not _importable("blocks") and not _importable("timm")


def _retyped(module: nn.Module, find: Callable[[str, str], type[nn.Module]]) -> nn.Module:
    """`module` with the same tensors, its timm/reference-like parts under the fake classes."""
    children = {name: _retyped(child, find) for name, child in module._modules.items()}
    if type(module) in RETYPED:
        clone = find(*RETYPED[type(module)])()
        clone._parameters.update(module._parameters)
        clone._buffers.update(module._buffers)
    else:
        clone = copy.copy(module)
    clone.__dict__["_modules"] = children
    return clone


def published_like(model: AstroMAE, find: Callable[[str, str], type[nn.Module]]) -> nn.Module:
    """`model` laid out as the published ViT_Astro, in DataParallel like the published file."""
    vit, shell = model.vit, _retyped(model, find)
    inception = shell.inception
    config = model.config
    last_in = inception[8].branch1.conv.in_channels
    width = config.inception_widths[-1]
    convblock = find("blocks.photoz", "ConvBlock")
    inception[8].branch3 = nn.Sequential(  # built but never run, like the published one
        convblock(conv=nn.Conv2d(last_in, width, 1), bn=nn.BatchNorm2d(width)),
        convblock(conv=nn.Conv2d(width, width, 5, padding=2), bn=nn.BatchNorm2d(width)),
    )
    published = find("blocks.model_vit_inception", "ViT_Astro")(
        patch_embed=shell.vit.patch_embed,
        cls_token=vit.cls_token,
        pos_embed=vit.pos_embed,
        blocks=shell.vit.blocks,
        fc_norm=vit.fc_norm,
        head=vit.head,
        vit_block=model.vit_mlp,
        inception_model=find("blocks.photoz", "Input_Mix_Model")(
            conv2d_init=inception[0],  # the stem conv, registered twice
            vis_inception=inception,
            magnitude_block=model.magnitude,
        ),
        concat_block=model.head,
    )
    return nn.DataParallel(published)


def _model(seed: int = 2) -> AstroMAE:
    """A tiny model with non-default BatchNorm statistics, so buffers must map too."""
    model = build_model(TINY, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def save_published(
    tmp_path: Path, model: AstroMAE, edit: Callable[[nn.Module], None] | None = None
) -> Path:
    """torch.save a published-style pickle of `model` (after `edit`), fake code then removed."""
    path = tmp_path / f"published-{uuid.uuid4().hex[:8]}.pt"
    root = tmp_path / f"code-{path.stem}"
    root.mkdir()
    with fake_reference_code(root) as find:
        published = published_like(model, find)
        if edit:
            edit(published.module)
        torch.save(published, path)
    return path


def _globals(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return [str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"]


def _predict(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return model(torch.randn(4, 5, 32, 32, generator=gen), torch.randn(4, 5, generator=gen))


def test_fixture_is_pickled_like_the_published_checkpoint(tmp_path: Path) -> None:
    path = save_published(tmp_path, _model())
    names = _globals(path)
    assert {
        "blocks.model_vit_inception ViT_Astro",
        "blocks.photoz InceptionBlock",
        "blocks.photoz ConvBlock",
        "timm.models.vision_transformer Block",
        "timm.models.layers.mlp Mlp",
        "torch.nn.parallel.data_parallel DataParallel",
    } <= set(names)
    with pytest.raises(ModuleNotFoundError, match="No module named 'blocks'"):
        torch.load(path, weights_only=False)  # what trust_pickle used to need


def test_model_import_converts_without_the_reference_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model()
    path = save_published(tmp_path, model)
    out = tmp_path / "astromae.safetensors"
    argv = ["model", "import", str(path), "--out", str(out), "--model-size", "tiny", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tensors"] == len(model.state_dict()) and report["out"] == str(out)
    assert report["parameters"] == count_parameters(model) and report["config"] == TINY.to_dict()
    assert report["renamed"]["inception_model.vis_inception. -> inception."] > 0
    assert {d.rsplit(".", 1)[0] for d in report["dropped"]} >= {
        "inception_model.conv2d_init",
        "inception_model.vis_inception.8.branch3.0.conv",
    }
    assert all(d.startswith(DROPPED_PREFIXES) for d in report["dropped"])
    converted = load_model(out)  # no config given: it is in the file's metadata
    assert converted.config == TINY and isinstance(converted.model, AstroMAE)
    assert torch.equal(_predict(converted.model), _predict(model))
    assert torch.equal(
        converted.model.state_dict()["inception.8.branch4.1.bn.running_var"],
        model.state_dict()["inception.8.branch4.1.bn.running_var"],
    )


def test_model_import_prints_what_it_mapped_and_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_published(tmp_path, _model())
    out = tmp_path / "m.safetensors"
    assert main(["model", "import", str(path), "--out", str(out), "--model-size", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "without running its code" in text and f"wrote {out}" in text
    assert "concat_block. -> head." in text and "inception_model.conv2d_init.weight" in text
    assert f"wrote {out}.mb32.onnx" in text


def test_model_import_writes_the_onnx_export_the_executor_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export sits beside the checkpoint (so uploading its prefix carries it) and a rank on
    the onnxruntime backend loads it as is; --no-onnx writes the checkpoint alone."""
    from cosmicai.inference.backends import export_path, load_engine_model

    path = save_published(tmp_path, _model())
    out = tmp_path / "m.safetensors"
    argv = ["model", "import", str(path), "--out", str(out), "--model-size", "tiny", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnx"] == str(export_path(out, 32))
    stamp = Path(report["onnx"]).stat().st_mtime_ns
    model = load_engine_model(out, backend="onnxruntime", micro_batch=32)
    assert model.path == Path(report["onnx"]) and model.trained  # type: ignore[union-attr]
    assert Path(report["onnx"]).stat().st_mtime_ns == stamp  # used, not exported again
    bare = tmp_path / "bare" / "m.safetensors"
    assert main([*argv[:4], str(bare), "--model-size", "tiny", "--no-onnx"]) == 0
    assert sorted(p.name for p in bare.parent.iterdir()) == ["m.safetensors"]


def test_malicious_reduce_stays_inert(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    model = _model()

    def plant(published: nn.Module) -> None:
        published.payload = CreatesFileWhenUnpickled(marker)
        published.inception_model.hook = CreatesFileWhenUnpickled(marker)

    path = save_published(tmp_path, model, plant)
    assert any(g.endswith(" open") for g in _globals(path))  # the pickle does name open()
    pickled = read_pickled_model(path)
    assert not marker.exists()
    assert any(name.endswith(".open") for name in pickled.stand_ins)
    assert pickled.root == "torch.nn.parallel.data_parallel.DataParallel"
    out = tmp_path / "m.safetensors"
    assert main(["model", "import", str(path), "--out", str(out), "--model-size", "tiny"]) == 0
    assert not marker.exists()
    assert torch.equal(_predict(load_model(out).model), _predict(model))


def test_a_pickle_that_is_no_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save(CreatesFileWhenUnpickled(marker), path)
    assert main(["model", "import", str(path), "--out", str(tmp_path / "m.safetensors")]) == 1
    message = capsys.readouterr().err
    assert "pickled Python code" in message and '"trust_pickle": true' in message
    assert "--trust-pickle" not in message
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()


def _break(published: nn.Module) -> None:
    del published.concat_block[2]._parameters["bias"]
    published.vit_block[2].weight = nn.Parameter(torch.zeros(3, 3))


def test_missing_and_misshaped_tensors_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_published(tmp_path, _model(), _break)
    out = tmp_path / "m.safetensors"
    assert main(["model", "import", str(path), "--out", str(out), "--model-size", "tiny"]) == 1
    message = capsys.readouterr().err
    assert "1 missing key(s): head.2.bias" in message
    assert "1 mis-shaped key(s): vit_mlp.2.weight [3, 3] vs model [32, 32]" in message
    assert not out.exists()


def test_wrong_model_size_is_refused(tmp_path: Path) -> None:
    path = save_published(tmp_path, _model())
    with pytest.raises(CheckpointError, match=r"mis-shaped key\(s\): .*vs model"):
        load_model(path)  # the published (full) config: a tiny model does not fill it


def test_name_mapping_covers_the_full_architecture(tmp_path: Path) -> None:
    """The published full model's names (388 entries, 15,764,649 parameters) map onto ours."""
    with torch.device("meta"):
        model = AstroMAE(AstroMAEConfig())
    with fake_reference_code(tmp_path) as find:
        with torch.device("meta"):
            published = published_like(model, find)
        state = published.state_dict()
        assert len(state) == 388 and count_parameters(published) == 15_764_649
    mapped, mapping = to_our_names(state)
    assert mapped.keys() == model.state_dict().keys()
    assert all(d.startswith(DROPPED_PREFIXES) for d in mapping.dropped)
    assert len(mapping.dropped) == len(state) - len(mapped) == 16


def test_payload_model_pt_loads_through_the_safe_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    path = save_published(tmp_path, model)
    gen = torch.Generator().manual_seed(1)
    images, magnitudes = torch.randn(6, 5, 32, 32, generator=gen), torch.randn(6, 5, generator=gen)
    part = tmp_path / "part-00000.safetensors"
    write_partition(part, images, magnitudes, torch.rand(6, generator=gen))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="cosmicai-runs")
        s3.upload_file(str(path), "cosmicai-runs", "models/published.pt")
        task = RankTask(
            run_id="r",
            bucket="cosmicai-runs",
            world_size=1,
            rank=0,
            files=[{"bucket": "cosmicai-data", "key": "p/part-00000.safetensors"}],
            settings={"model": "models/published.pt", "model_size": "tiny", "batch_size": 4},
        )
        record = run_engine(s3, task, [part])
    with torch.no_grad():
        expected = model(images, magnitudes)
    assert torch.allclose(torch.tensor(record["predictions"]), expected, atol=1e-6, rtol=0)
