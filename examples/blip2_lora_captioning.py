"""BLIP-2 captioning with LoRA (r=16, alpha=32, dropout 0.05): Q-Former connector, image + caption pairs.

With a real checkpoint (converted from transformers' Blip2ForConditionalGeneration; OPT LMs only):

    python examples/blip2_lora_captioning.py --blip2 Salesforce/blip2-opt-2.7b \\
        --data_path captions.jsonl --output_dir outputs/blip2-lora --learning_rate 1e-4 --connector_lr 1e-4 \\
        --num_train_epochs 3 --per_device_train_batch_size 8 --bf16

On the embedded default (built-in tiny CLIP + LLaMA joined by a fresh Q-Former, captions of held-out digits):

    python examples/blip2_lora_captioning.py --output_dir outputs/blip2-demo --max_steps 300

It prints captions of a few held-out images before and after training.
"""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from visionbridge import VisionBridgeTrainer, VisionBridgeTrainingArguments, from_blip2, load_training_data
from visionbridge.cli.train import ModelArguments, build_model
from visionbridge.trainer.digits import write_digits_data
from visionbridge.trainer.evaluation import evaluate


@dataclass
class CaptioningArguments:
    blip2: str | None = field(default=None, metadata={"help": "A BLIP-2 (OPT) checkpoint to start from."})
    data_path: str | None = field(default=None, metadata={"help": "Caption data (default: digit captions)."})
    shown: int = field(default=3, metadata={"help": "Held-out images captioned before and after training."})


def captions(model, processor, samples, count: int) -> list[str]:
    report = evaluate(model, processor, [samples[i] for i in range(count)], max_new_tokens=16, progress=False)
    return [f"{row['answer']!r} (reference {row['reference']!r})" for row in report["samples"]]


def main() -> None:
    parser = HfArgumentParser((CaptioningArguments, VisionBridgeTrainingArguments))
    parser.set_defaults(lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=1e-3, connector_lr=1e-3)
    parser.set_defaults(per_device_train_batch_size=16, report_to="none", save_strategy="no", logging_steps=50)
    example, args = parser.parse_args_into_dataclasses()
    output_dir = Path(args.output_dir)
    if example.blip2 is not None:
        model, processor = from_blip2(example.blip2)
    else:
        model, processor, _ = build_model(ModelArguments(connector="qformer", vision_feature_layer=-1), output_dir)
    digits = write_digits_data(output_dir / "digits", kinds=("caption",))
    train = load_training_data(example.data_path or digits["train"])
    held_out = load_training_data(digits["held_out"])

    print("before:", *captions(model, processor, held_out, example.shown), sep="\n  ")
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    trainer.train()
    trainer.save_model(args.output_dir)
    print("after:", *captions(trainer.model, processor, held_out, example.shown), sep="\n  ")


if __name__ == "__main__":
    main()
