"""`visionbridge convert --from llava|blip2 SRC DST`: a LLaVA or BLIP-2 checkpoint as a VisionBridge folder."""

import argparse
from pathlib import Path

from .common import require_empty, save_complete


def _convert(args: argparse.Namespace) -> None:
    from ..modeling import from_blip2, from_llava

    destination = Path(args.destination)
    require_empty(destination)
    convert = {"llava": from_llava, "blip2": from_blip2}[args.source_format]
    model, processor = convert(args.source)
    save_complete(destination, model, processor)
    print(f"converted {args.source_format} checkpoint {args.source} -> {destination}")


def build_parser() -> argparse.ArgumentParser:
    convert = argparse.ArgumentParser(
        prog="visionbridge convert",
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
    return convert


def main(argv: list[str] | None = None) -> None:
    _convert(build_parser().parse_args(argv))
