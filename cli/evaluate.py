"""`visionbridge eval MODEL --data_path FILE`: answer each sample's last question and score it.

Scores (see visionbridge.trainer.evaluation): accuracy (the reference appears in the answer as whole words),
exact match, and caption overlap (unigram F1). The report, with every answer, is written as JSON beside the
adapter (or the model, without one) as eval_report.json, or where --output says.
"""

import json
from pathlib import Path

from .usage import DTYPES, CommandParser, UsageError, existing_path, model_source

REPORT_NAME = "eval_report.json"


def build_parser() -> CommandParser:
    parser = CommandParser("visionbridge eval", __doc__)
    parser.add_argument("model", help="VisionBridge model folder or Hub repo (the base, when --adapter is given)")
    parser.add_argument("--adapter", help="LoRA adapter folder or Hub repo trained on the model")
    parser.add_argument("--data_path", required=True, help="LLaVA / Qwen-VL JSON or JSONL, or a datasets folder")
    parser.add_argument("--image_folder", help="folder the image paths are relative to (default: the file's)")
    parser.add_argument("--data_format", default="auto", choices=["auto", "llava", "qwen", "datasets"])
    parser.add_argument(
        "--output", help=f"where to write the JSON report (default: {REPORT_NAME} in the adapter's or model's folder)"
    )
    parser.add_argument("--batch_size", type=int, default=16, help="samples answered at once")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="longest answer, in tokens")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="dtype of the loaded weights")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow checkpoints that ship their own code")
    return parser


def report_path(args) -> Path:
    """--output, else eval_report.json in the adapter's folder (or the model's), which must be local."""
    if args.output is not None:
        output = Path(args.output)
        if output.is_dir():
            raise UsageError(f"--output {args.output} is a folder; expected a file name")
        if not output.parent.is_dir():
            raise UsageError(f"--output {args.output}: the folder {output.parent} does not exist")
        return output
    folder = Path(args.adapter if args.adapter is not None else args.model)
    if not folder.is_dir():
        raise UsageError(f"{folder} is a Hub repo, not a folder here: say where the report goes with --output")
    return folder / REPORT_NAME


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model_source(args.model, "model")
    if args.adapter is not None:
        model_source(args.adapter, "--adapter", marker="adapter_config.json")
    data = existing_path(args.data_path, "--data_path")
    existing_path(args.image_folder, "--image_folder", folder=True)
    output = report_path(args)

    from .. import register_auto_classes

    register_auto_classes()  # first: it imports the package's parts in the order they need
    from ..trainer import load_training_data
    from ..trainer.evaluation import evaluate
    from .common import load_for_inference, show_answers

    try:
        samples = load_training_data(data, args.image_folder, format=args.data_format)
    except (ValueError, ImportError) as error:
        raise UsageError(str(error)) from None
    model, processor = load_for_inference(args.model, args.adapter, args.trust_remote_code, args.dtype)
    report = evaluate(model, processor, samples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    output.write_text(json.dumps({"data": args.data_path, **report}, indent=1))
    show_answers(samples, report)
    print(f"report: {output}")
