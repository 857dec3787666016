"""The `visionbridge` command."""

import argparse
import os
import shutil
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> None:
    from .modeling import from_blip2, from_llava

    destination = Path(args.destination)
    if destination.exists() and any(destination.iterdir()):
        sys.exit(f"{destination} exists and is not empty; choose a new folder.")
    convert = {"llava": from_llava, "blip2": from_blip2}[args.source_format]
    model, processor = convert(args.source)
    # Written beside the destination, then renamed: an interrupted run leaves no folder that looks complete.
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    if destination.exists():
        destination.rmdir()
    os.replace(partial, destination)
    print(f"converted {args.source_format} checkpoint {args.source} -> {destination}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionbridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert",
        help="convert a LLaVA (llava-hf) or BLIP-2 checkpoint into a Hub-ready VisionBridge folder",
        description="Convert a transformers LlavaForConditionalGeneration (llava-hf format) or "
        "Blip2ForConditionalGeneration (decoder-only LM) checkpoint into a VisionBridge model folder with its "
        "processor and remote code.",
    )
    convert.add_argument(
        "--from",
        dest="source_format",
        choices=["llava", "blip2"],
        required=True,
        help="format of the source checkpoint",
    )
    convert.add_argument("source", help="Hub id or local folder of the source checkpoint")
    convert.add_argument("destination", help="new folder to write the VisionBridge model into")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)
