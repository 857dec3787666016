"""`visionbridge train`: fine-tune with VisionBridgeTrainer, every flag parsed by HfArgumentParser.

With no model or data flags it runs the embedded default: built-in tiny components (a CLIP-shaped encoder and
a LLaMA-shaped LM) learn scikit-learn's handwritten digits, then answer questions about held-out digits.

    visionbridge train --output_dir outputs/digits --max_steps 2000 --learning_rate 1e-3 --connector_lr 3e-3
    visionbridge train --vision_model openai/clip-vit-large-patch14-336 --language_model lmsys/vicuna-7b-v1.5 \\
        --data_path llava_v1_5_mix665k.json --image_folder data/ --output_dir outputs/llava-lora \\
        --learning_rate 2e-4 --connector_lr 2e-5 --warmup_ratio 0.03 --lr_scheduler_type cosine --bf16
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from ..modeling import from_components
from ..modeling.connectors import CONNECTOR_NAMES
from ..modeling.tiny_components import build_tiny_components
from ..trainer import VisionBridgeTrainer, VisionBridgeTrainingArguments, load_training_data
from ..trainer.evaluation import evaluate
from .common import show_answers


@dataclass
class ModelArguments:
    model: str | None = field(
        default=None, metadata={"help": "A VisionBridge model (folder or Hub repo) to fine-tune further."}
    )
    vision_model: str | None = field(
        default=None,
        metadata={"help": "Vision encoder checkpoint (CLIP/SigLIP, Hub id or folder). Default: the built-in tiny one."},
    )
    language_model: str | None = field(
        default=None, metadata={"help": "Causal LM checkpoint (Hub id or folder). Default: the built-in tiny one."}
    )
    connector: str = field(
        default="mlp2x_gelu", metadata={"help": f"Connector joining them: {', '.join(CONNECTOR_NAMES)} or mlpNx_gelu."}
    )
    vision_feature_layer: int = field(default=-2, metadata={"help": "Hidden layer of the encoder to read."})
    vision_feature_select: str = field(
        default="patch", metadata={"help": "patch: drop the CLS token; full: keep it.", "choices": ["patch", "full"]}
    )
    image_aspect_ratio: str = field(
        default="pad", metadata={"help": "pad (to a square, as LLaVA-1.5) or resize.", "choices": ["pad", "resize"]}
    )
    mm_use_im_start_end: bool = field(
        default=False,
        metadata={"help": "Wrap each image's placeholders in learned start/end tokens (LLaVA's option)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow checkpoints that ship their own code."})


@dataclass
class DataArguments:
    data_path: str | None = field(
        default=None,
        metadata={"help": "LLaVA / Qwen-VL JSON or JSONL, or a datasets folder. Default: the built-in digits task."},
    )
    image_folder: str | None = field(default=None, metadata={"help": "Folder the image paths are relative to."})
    data_format: str = field(
        default="auto", metadata={"help": "Format of data_path.", "choices": ["auto", "llava", "qwen", "datasets"]}
    )
    eval_data_path: str | None = field(
        default=None,
        metadata={
            "help": "Data scored after training (accuracy, exact match, caption overlap); the digits task "
            "scores its held-out split."
        },
    )
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Longest answer generated when scoring."})
    digits_kinds: str = field(
        default="question",
        metadata={"help": "Built-in task records: question, caption or question,caption."},
    )


def build_model(model_args: ModelArguments, output_dir: Path):
    """(model, processor, base folder): the base is saved before training, so the adapter has a base to load on."""
    if model_args.model is not None:
        remote = model_args.trust_remote_code
        model = AutoModelForImageTextToText.from_pretrained(model_args.model, trust_remote_code=remote)
        processor = AutoProcessor.from_pretrained(model_args.model, trust_remote_code=remote)
        return model, processor, model_args.model
    vision, language = model_args.vision_model, model_args.language_model
    if (vision is None) != (language is None):
        raise ValueError("Pass both --vision_model and --language_model, or neither for the built-in tiny ones.")
    if vision is None:
        vision, language = build_tiny_components(output_dir / "components")
    model, processor = from_components(
        vision,
        language,
        connector=model_args.connector,
        trust_remote_code=model_args.trust_remote_code,
        vision_feature_layer=model_args.vision_feature_layer,
        vision_feature_select=model_args.vision_feature_select,
        image_aspect_ratio=model_args.image_aspect_ratio,
        mm_use_im_start_end=model_args.mm_use_im_start_end,
    )
    base = output_dir / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    return model, processor, str(base)


def parse_arguments(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, VisionBridgeTrainingArguments) from the command line."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, VisionBridgeTrainingArguments),
        prog="visionbridge train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args_into_dataclasses(argv)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(argv)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, processor, base = build_model(model_args, output_dir)

    eval_path = data_args.eval_data_path
    if data_args.data_path is None:
        from ..trainer.digits import write_digits_data

        kinds = tuple(kind.strip() for kind in data_args.digits_kinds.split(","))
        digits = write_digits_data(output_dir / "digits", kinds=kinds)
        data_path, eval_path = digits["train"], eval_path or digits["held_out"]
        print(f"built-in task: {data_path} (training) and {digits['held_out']} (held out, never trained on)")
    else:
        data_path = data_args.data_path
    train_data = load_training_data(
        data_path, data_args.image_folder, format=data_args.data_format, on_bad_sample=training_args.on_bad_sample
    )

    trainer = VisionBridgeTrainer(model=model, args=training_args, train_dataset=train_data, processing_class=processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    print(f"saved the {'adapter' if training_args.uses_lora else 'model'} to {output_dir} (base model: {base})")
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=base if not Path(base).exists() else None)

    if eval_path is not None and trainer.is_world_process_zero():
        eval_data = load_training_data(eval_path, data_args.image_folder, format=data_args.data_format)
        report = evaluate(trainer.model, processor, eval_data, max_new_tokens=data_args.eval_max_new_tokens)
        report_path = output_dir / "eval_report.json"
        report_path.write_text(json.dumps({"data": str(eval_path), **report}, indent=1))
        show_answers(eval_data, report)
        print(f"report: {report_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
