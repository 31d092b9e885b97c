"""`cosmicai model import`: convert a checkpoint, the published pickled AstroMAE included, to our
.safetensors file without running any code it holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cosmicai.cli.output import print_json
from cosmicai.safe_input import writable_dir

OUT_SUFFIX = ".safetensors"


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser(
        "model", help="model checkpoints", description="Model checkpoints."
    )
    commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    convert = commands.add_parser(
        "import",
        help="convert a checkpoint (e.g. the published pickled .pt) to .safetensors",
        description=(
            "Read a checkpoint, the published AstroMAE whole-model pickle "
            "(torch.save(DataParallel(ViT_Astro(...)))) included, without running any of its "
            "code and without its classes (the reference code, timm) installed; map its tensor "
            "names to ours and write a .safetensors file with the model config in its "
            "metadata. Refused unless its tensors fill our model exactly."
        ),
    )
    convert.add_argument(
        "source", type=Path, metavar="CHECKPOINT", help=".pt, .pth or .safetensors"
    )
    convert.add_argument(
        "--out",
        type=_safetensors_path,
        required=True,
        metavar="MODEL.safetensors",
        help="file to write",
    )
    convert.add_argument(
        "--model-size",
        choices=("full", "tiny"),
        default=None,
        help="config for files that store none (default: the file's own config, else full)",
    )
    convert.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="do not write the ONNX export for the onnxruntime backend beside --out",
    )
    convert.add_argument("--json", action="store_true", help="print one JSON object")
    convert.set_defaults(func=run_import)


def _safetensors_path(text: str) -> Path:
    if Path(text).suffix.lower() != OUT_SUFFIX:
        raise argparse.ArgumentTypeError(
            f"{text!r} must end in {OUT_SUFFIX}, e.g. --out astromae.safetensors"
        )
    return Path(text)


def run_import(args: argparse.Namespace) -> int:
    writable_dir(args.out.parent)
    # imported here, not at CLI start-up: it loads PyTorch
    from cosmicai.inference.checkpoint import load_model, save_checkpoint
    from cosmicai.inference.model import AstroMAEConfig

    config = {"full": AstroMAEConfig(), "tiny": AstroMAEConfig.tiny(), None: None}[args.model_size]
    loaded = load_model(args.source, config=config)
    save_checkpoint(loaded.model, args.out)
    exported = _export(args.out) if args.onnx else None
    mapping = loaded.mapping
    result: dict[str, Any] = {
        "source": str(args.source),
        "out": str(args.out),
        "tensors": len(loaded.model.state_dict()),
        "parameters": loaded.parameters,
        "renamed": mapping.renamed if mapping else {},
        "dropped": list(mapping.dropped) if mapping else [],
        "config": loaded.config.to_dict(),
        "onnx": exported,
    }
    if args.json:
        print_json(result)
    else:
        print(import_report(result))
    return 0


def import_report(result: dict[str, Any]) -> str:
    lines = [
        f"read {result['source']} without running its code: {result['tensors']} tensors, "
        f"{result['parameters']:,} parameters"
    ]
    lines += [f"  renamed {count:4d} x {rule}" for rule, count in result["renamed"].items()]
    if result["dropped"]:
        lines.append(
            f"  dropped {len(result['dropped'])} tensors with no counterpart in our model:"
        )
        lines += [f"    {name}" for name in result["dropped"]]
    lines.append(f"wrote {result['out']} (config in its metadata)")
    if result["onnx"]:
        lines.append(
            f"wrote {result['onnx']} (the onnxruntime backend's export; upload it beside the "
            "checkpoint, which `cosmicai upload` of the folder does)"
        )
    return "\n".join(lines)


def _export(checkpoint: Path) -> str:
    """Export `checkpoint` for the engine's default CPU micro-batch; return the file written."""
    from cosmicai.inference.backends import onnx_model
    from cosmicai.inference.engine import CPU_MICRO_BATCH

    return str(onnx_model(checkpoint, CPU_MICRO_BATCH).path)
