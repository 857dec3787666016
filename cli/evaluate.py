"""`visionbridge eval MODEL --data_path FILE`: answer each sample's last question and score it.

Scores (see visionbridge.trainer.evaluation): accuracy (the reference appears in the answer as whole words),
exact match, and caption overlap (unigram F1). The report, with every answer, is written as JSON.
"""

import argparse
import json
from pathlib import Path

from ..trainer import load_training_data
from ..trainer.evaluation import evaluate
from .common import load_for_inference, show_answers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionbridge eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="VisionBridge model folder or Hub repo (the base, when --adapter is given)")
    parser.add_argument("--adapter", help="LoRA adapter folder or Hub repo trained on the model")
    parser.add_argument("--data_path", required=True, help="LLaVA / Qwen-VL JSON or JSONL, or a datasets folder")
    parser.add_argument("--image_folder", help="folder the image paths are relative to (default: the file's)")
    parser.add_argument("--data_format", default="auto", choices=["auto", "llava", "qwen", "datasets"])
    parser.add_argument("--output", default="eval_report.json", help="where to write the JSON report")
    parser.add_argument("--batch_size", type=int, default=16, help="samples answered at once")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="longest answer, in tokens")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow checkpoints that ship their own code")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model, processor = load_for_inference(args.model, args.adapter, args.trust_remote_code, args.dtype)
    samples = load_training_data(args.data_path, args.image_folder, format=args.data_format)
    report = evaluate(model, processor, samples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    Path(args.output).write_text(json.dumps({"data": args.data_path, **report}, indent=1))
    show_answers(samples, report)
    print(f"report: {args.output}")
