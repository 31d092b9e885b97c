"""Checkpoint loading and saving: round trips, safe loading, clear errors for bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from cosmicai.errors import CheckpointError, CosmicAIError
from cosmicai.inference import checkpoint as checkpoint_module
from cosmicai.inference.checkpoint import LoadedModel, load_model, save_checkpoint
from cosmicai.inference.model import AstroMAE, AstroMAEConfig, build_model, count_parameters

TINY = AstroMAEConfig.tiny()


class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it runs open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.marker, "w")


class MagnitudeOnly(nn.Module):
    """Another model with the (images, magnitudes) call signature."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 1)

    def forward(self, images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        return self.fc(magnitudes)[:, 0]


def _inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, 5, 32, 32, generator=gen), torch.randn(n, 5, generator=gen)


@pytest.fixture
def model() -> AstroMAE:
    """A tiny model with non-default BatchNorm statistics, so buffers must round-trip too."""
    model = build_model(TINY, seed=2)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.num_batches_tracked.fill_(17)
    return model.eval()


def _predict(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*_inputs())


def _assert_same_model(loaded: LoadedModel, original: AstroMAE, source: Path) -> None:
    assert isinstance(loaded.model, AstroMAE)
    assert loaded.trained and loaded.source == str(source)
    assert loaded.config == original.config and loaded.model.config == original.config
    assert loaded.parameters == count_parameters(original)
    assert not loaded.model.training
    assert torch.equal(_predict(loaded.model), _predict(original))  # bit-identical
    assert loaded.model.state_dict()["inception.2.branch1.bn.num_batches_tracked"] == 17


def test_no_checkpoint_gives_seeded_untrained_model() -> None:
    loaded = load_model(config=TINY, seed=5)
    assert not loaded.trained and loaded.source == "random-init(seed=5)"
    assert loaded.config == TINY and not loaded.model.training
    assert loaded.parameters == count_parameters(loaded.model)
    assert torch.equal(_predict(loaded.model), _predict(build_model(TINY, seed=5).eval()))
    assert not torch.equal(_predict(loaded.model), _predict(load_model(config=TINY).model))


def test_default_is_the_published_size() -> None:
    loaded = load_model()
    assert loaded.config == AstroMAEConfig() and 15_000_000 < loaded.parameters < 16_500_000


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "model.pth"])
def test_round_trip_is_bit_identical(tmp_path: Path, model: AstroMAE, name: str) -> None:
    path = save_checkpoint(model, tmp_path / "sub" / name)
    assert path == tmp_path / "sub" / name
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp file left behind
    _assert_same_model(load_model(path), model, path)  # config comes from the file


def test_safetensors_file_holds_no_pickle(tmp_path: Path, model: AstroMAE) -> None:
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert b'"format":"cosmicai-astromae/1"' in path.read_bytes()[8 : 8 + header_len]


def test_plain_state_dict_needs_the_config(tmp_path: Path, model: AstroMAE) -> None:
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    _assert_same_model(load_model(path, config=TINY), model, path)


def test_dataparallel_module_prefix(tmp_path: Path, model: AstroMAE) -> None:
    path = tmp_path / "dp.pt"
    state = nn.DataParallel(model).state_dict()
    assert next(iter(state)).startswith("module.")
    torch.save(state, path)
    _assert_same_model(load_model(path, config=TINY), model, path)


def test_mismatched_config_lists_keys(tmp_path: Path, model: AstroMAE) -> None:
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)  # default (published) config
    message = str(err.value)
    assert str(path) in message
    assert "missing key(s): magnitude.6.bias" in message
    assert "mis-shaped key(s): head.0.bias [32] vs model [1024]" in message
    assert "head.0.weight [32, 96] vs model [1024, 3216]" in message
    assert "more)" in message  # long lists are cut short


def test_unexpected_and_missing_keys_are_named(tmp_path: Path, model: AstroMAE) -> None:
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["head.2.bias"]
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing key\(s\): head\.2\.bias.*"
        r"1 unexpected key\(s\): extra\.weight",
    ):
        load_model(path, config=TINY)


def test_requested_config_must_agree_with_stored_one(tmp_path: Path, model: AstroMAE) -> None:
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"another model config \(embed_dim: file 16, "
        r"requested 192",
    ):
        load_model(path, config=AstroMAEConfig())
    assert load_model(path, config=TINY).config == TINY


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_code_pickle_is_refused_without_trust(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if legacy:
        path.write_bytes(pickle.dumps(CreatesFileWhenUnpickled(marker)))
    else:
        torch.save(CreatesFileWhenUnpickled(marker), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "pickled Python code" in message
    assert "arbitrary code" in message
    assert '"trust_pickle": true' in message and "--trust-pickle" not in message  # no such flag
    assert not marker.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_whole_model_pickle_loads_without_trust(
    tmp_path: Path, model: AstroMAE, trust: bool
) -> None:
    path = tmp_path / "published.pt"
    torch.save(nn.DataParallel(model), path)
    loaded = load_model(path, trust_pickle=trust)  # its config comes from the pickled model
    _assert_same_model(loaded, model, path)
    assert loaded.mapping is not None and loaded.mapping.renamed == {
        "module. -> (none)": len(model.state_dict())
    }


def test_bare_module_pickle(tmp_path: Path, model: AstroMAE) -> None:
    path = tmp_path / "bare.pth"
    torch.save(model, path)
    _assert_same_model(load_model(path), model, path)


def test_trusted_foreign_module_is_used_as_is(tmp_path: Path) -> None:
    other = MagnitudeOnly().eval()
    path = tmp_path / "other.pt"
    torch.save(nn.DataParallel(other), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert "unexpected key(s): fc.bias, fc.weight" in message
    assert "whole pickled torch.nn.parallel.data_parallel.DataParallel" in message
    assert "read without running its code" in message and '"trust_pickle": true' in message
    loaded = load_model(path, trust_pickle=True)
    assert isinstance(loaded.model, MagnitudeOnly) and loaded.parameters == 6
    assert torch.equal(_predict(loaded.model), _predict(other))


def _published_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state_dict renamed to the published ViT_Astro layout, written out independently."""
    renames = {
        "vit.": "",
        "vit_mlp.": "vit_block.",
        "head.": "concat_block.",
        "inception.": "inception_model.vis_inception.",
        "magnitude.": "inception_model.magnitude_block.",
    }
    published = {}
    for key, value in state.items():
        prefix = next(p for p in renames if key.startswith(p))
        published[renames[prefix] + key[len(prefix) :]] = value
    for key in ("weight", "bias"):  # the stem conv is registered twice in the published model
        published[f"inception_model.conv2d_init.{key}"] = state[f"inception.0.{key}"]
    published["inception_model.vis_inception.8.branch3.0.conv.weight"] = torch.ones(2, 32, 1, 1)
    return published


def test_published_layout_state_dict_maps_by_prefix(tmp_path: Path, model: AstroMAE) -> None:
    published = _published_layout(model.state_dict())
    assert "blocks.0.attn.qkv.weight" in published and "head.weight" in published
    path = tmp_path / "published_state.pt"
    torch.save({f"module.{k}": v for k, v in published.items()}, path)
    _assert_same_model(load_model(path, config=TINY), model, path)


@pytest.mark.parametrize(
    "name",
    ["garbage.pt", "truncated.pt", "empty.pth", "garbage.safetensors", "truncated.safetensors"],
)
def test_unreadable_files_name_the_file(tmp_path: Path, model: AstroMAE, name: str) -> None:
    path = tmp_path / name
    if name.startswith("garbage"):
        path.write_bytes(bytes(range(256)) * 40)
    elif name.startswith("truncated"):
        data = save_checkpoint(model, tmp_path / f"full{path.suffix}").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    for trust in (False, True):
        with pytest.raises(CheckpointError, match=f"checkpoint {path} is not a readable"):
            load_model(path, trust_pickle=trust)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": "weights", "epoch": 3}, r"not a state_dict .*model, epoch"),
        ({}, "it is empty"),
        ([1, 2, 3], "holds a list, not model weights"),
        ({"format": "cosmicai-astromae/9", "state_dict": {}}, "has format 'cosmicai-astromae/9'"),
        ({"format": "cosmicai-astromae/1", "state_dict": {}}, "without a 'state_dict' and"),
    ],
)
def test_torch_files_without_weights(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unsupported suffix '\.bin'"):
        load_model(odd)


def test_bad_device_is_an_actionable_error() -> None:
    with pytest.raises(CosmicAIError, match="cannot place the model on device 'nonsense'"):
        load_model(config=TINY, device="nonsense")


def test_save_rejects_unknown_suffix(tmp_path: Path, model: AstroMAE) -> None:
    with pytest.raises(CheckpointError, match=r"use a \.safetensors"):
        save_checkpoint(model, tmp_path / "model.ckpt")


def test_failed_save_keeps_the_old_file(
    tmp_path: Path, model: AstroMAE, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build_model(TINY, seed=99), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_loading_weights_skips_the_random_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's model is built on the meta device and filled from the file: the seeded
    init of every parameter (15.8 M for the full model) is never drawn only to be overwritten."""
    import cosmicai.inference.model as model_module

    path = save_checkpoint(build_model(AstroMAEConfig.tiny(), seed=4), tmp_path / "m.safetensors")
    expected = {k: v.clone() for k, v in load_model(path).model.state_dict().items()}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("random init drawn for a model whose weights are loaded")

    monkeypatch.setattr(model_module, "_initialize", refuse)
    loaded = load_model(path)
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(AssertionError, match="random init drawn"):
        load_model(None, config=AstroMAEConfig.tiny())  # the untrained model does draw it
