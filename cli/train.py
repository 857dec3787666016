"""`visionbridge train`: fine-tune with VisionBridgeTrainer, every flag parsed by HfArgumentParser.

With no model or data flags it runs the embedded default: built-in tiny components (a CLIP-shaped encoder and
a LLaMA-shaped LM) learn scikit-learn's handwritten digits, then answer questions about held-out digits.

    visionbridge train --output_dir outputs/digits --max_steps 2000 --learning_rate 1e-3 --connector_lr 3e-3
    visionbridge train --connector qformer --stage qformer_pretrain --digits_kinds caption --output_dir outputs/qf1
    visionbridge train --model outputs/qf1 --output_dir outputs/qf2 --max_steps 2000 --learning_rate 1e-3
    visionbridge train --vision_model openai/clip-vit-large-patch14-336 --language_model lmsys/vicuna-7b-v1.5 \\
        --data_path llava_v1_5_mix665k.json --image_folder data/ --output_dir outputs/llava-lora \\
        --learning_rate 2e-4 --connector_lr 2e-5 --warmup_ratio 0.03 --lr_scheduler_type cosine --bf16
"""

import argparse
import dataclasses
import importlib.util
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..trainer.options import VisionBridgeOptions
from .usage import CommandParser, OneLineErrors, UsageError, existing_path, model_source, unknown_options

TRAINER_OPTIONS = """\
Every transformers TrainingArguments flag works as well (--learning_rate, --num_train_epochs,
--per_device_train_batch_size, --gradient_accumulation_steps, --bf16, --save_steps, --report_to, ...):
'visionbridge train --help-all' lists them after these. A non-empty --output_dir is refused unless
--resume_from_checkpoint or --overwrite_output_dir is given."""


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
        default="mlp2x_gelu",
        metadata={
            "help": "Connector joining them: linear, mlpNx_gelu (LLaVA-1.5: mlp2x_gelu), pixel_shuffle, qformer or "
            "resampler (at the built-in components' scale without --vision_model/--language_model)."
        },
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


def _parser(dataclass_types: tuple, **kwargs):
    from transformers import HfArgumentParser

    class Parser(OneLineErrors, HfArgumentParser):
        pass

    return Parser(dataclass_types, prog="visionbridge train", allow_abbrev=False, **kwargs)


def options_parser() -> CommandParser:
    """visionbridge's own options (model, data, stage, learning rates, LoRA), listed without importing transformers
    (which takes seconds); the command line itself is parsed by HfArgumentParser (`parse_arguments`)."""
    parser = CommandParser("visionbridge train", __doc__, usage="visionbridge train [options]", epilog=TRAINER_OPTIONS)
    for title, options in (("model", ModelArguments), ("data", DataArguments), ("training", VisionBridgeOptions)):
        group = parser.add_argument_group(f"{title} options")
        for option in dataclasses.fields(options):
            group.add_argument(
                f"--{option.name}",
                choices=option.metadata.get("choices"),
                metavar=None if "choices" in option.metadata else option.name.upper(),
                help=option.metadata["help"] + ("" if option.default is None else f" (default: {option.default})"),
            )
    return parser


def _full_parser(**kwargs):
    from ..trainer import VisionBridgeTrainingArguments

    return _parser((ModelArguments, DataArguments, VisionBridgeTrainingArguments), **kwargs)


def full_help() -> str:
    """visionbridge's options, then the Trainer's (those of transformers' TrainingArguments)."""
    import transformers

    own = options_parser()
    trainer = _full_parser(usage=argparse.SUPPRESS, add_help=False)
    shown = {
        option.name
        for options in (ModelArguments, DataArguments, VisionBridgeOptions)
        for option in dataclasses.fields(options)
    }
    for action in trainer._actions:
        if action.dest in shown:
            action.help = argparse.SUPPRESS
    title = f"Trainer options (transformers {transformers.__version__} TrainingArguments)"
    return f"{own.format_help()}\n\n{title}:\n{trainer.format_help().partition(chr(10))[2].rstrip()}"


def parse_arguments(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, VisionBridgeTrainingArguments) from the command line; a mistake is a
    UsageError. --help and --help-all print their text and raise SystemExit(0)."""
    argv = list(argv or [])
    if "-h" in argv or "--help" in argv:
        options_parser().print_help()
        raise SystemExit(0)
    if "--help-all" in argv:
        print(full_help())
        raise SystemExit(0)
    if any(arg.split("=")[0] == "--deepspeed" for arg in argv) and importlib.util.find_spec("deepspeed") is None:
        # The arguments' own check would fail with a traceback naming a distribution.
        raise UsageError("--deepspeed needs DeepSpeed, which is not installed: pip install 'visionbridge[deepspeed]'")
    parser = _full_parser(add_help=False)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ValueError as error:  # raised by the arguments' own checks (__post_init__)
        raise UsageError(str(error)) from None
    if remaining:
        raise UsageError(f"{unknown_options(remaining, parser.option_names())} (see visionbridge train --help)")
    return tuple(parsed)


def check(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """Everything that can be wrong before anything loads: the sources, the data, the output folder."""
    from .. import register_auto_classes
    from ..configuration import VisionBridgeConfig
    from ..modeling.tiny_components import TINY_CONNECTOR_SETTINGS, tiny_vision_config
    from ..trainer.digits import KINDS, sklearn_datasets

    register_auto_classes()  # imports the package's parts in the order they need
    if model_args.model is not None:
        if model_args.vision_model is not None or model_args.language_model is not None:
            raise UsageError("pass --model, or --vision_model and --language_model, not both")
        model_source(model_args.model, "--model")
    elif (model_args.vision_model is None) != (model_args.language_model is None):
        raise UsageError("pass both --vision_model and --language_model, or neither for the built-in tiny ones")
    if model_args.vision_model is not None:
        model_source(model_args.vision_model, "--vision_model")
        model_source(model_args.language_model, "--language_model")
    built_in = model_args.model is None and model_args.vision_model is None
    try:  # the config is what knows the connectors; the built-in components' settings are checked as they will be
        VisionBridgeConfig(
            vision_config=tiny_vision_config() if built_in else None,
            connector=model_args.connector,
            connector_config=TINY_CONNECTOR_SETTINGS.get(model_args.connector) if built_in else None,
        )
    except ValueError as error:
        raise UsageError(f"--connector: {error}") from None
    if training_args.stage == "qformer_pretrain" and model_args.model is None and model_args.connector != "qformer":
        raise UsageError(
            f"--stage qformer_pretrain trains a Q-Former: pass --connector qformer, not {model_args.connector}"
        )
    for flag, value in (("--data_path", data_args.data_path), ("--eval_data_path", data_args.eval_data_path)):
        path = existing_path(value, flag)
        if path is not None and Path(path).is_dir():
            _require(_import_datasets, f"{flag} {path}")
    existing_path(data_args.image_folder, "--image_folder", folder=True)
    if data_args.data_path is None:
        kinds = {kind.strip() for kind in data_args.digits_kinds.split(",")}
        if not kinds <= set(KINDS):
            raise UsageError(f"--digits_kinds {data_args.digits_kinds}: choose among {', '.join(KINDS)}")
        _require(sklearn_datasets, "the built-in digits task (no --data_path)")
    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file")
    earlier = sorted(path.name for path in output_dir.iterdir()) if output_dir.is_dir() else []
    if earlier and not (training_args.resume_from_checkpoint or training_args.overwrite_output_dir):
        shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise UsageError(
            f"--output_dir {output_dir} is not empty ({shown}): pass --overwrite_output_dir to write over the "
            "run there, or --resume_from_checkpoint to continue it"
        )


def _import_datasets():
    from ..trainer.data import import_datasets

    return import_datasets()


def _require(importer, what: str) -> None:
    try:
        importer()
    except ImportError as error:
        raise UsageError(f"{what}: {error}") from None


@contextmanager
def _no_loading_bars():
    """Hide transformers' loading and saving bars, which say nothing about the tiny built-in components."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


@contextmanager
def _one_process_writes(training_args):
    """Yield whether this process writes the run's shared files (the built-in data, components and base model):
    one process writes them (each machine's first with --save_on_each_node, else the first of the run) while the
    others wait, every process having checked the output folder before anything is written there. Every model built
    in the block is whole in this process: a DeepSpeed ZeRO-3 config in the arguments makes transformers build each
    model partitioned across the processes (from_pretrained, from_config), which neither the built-in components nor
    the saved base survive; the engine shards the model when training starts."""
    import torch
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    if training_args.world_size > 1:
        torch.distributed.barrier()
    if training_args.deepspeed:
        unset_hf_deepspeed_config()
    try:
        with training_args.main_process_first(local=training_args.save_on_each_node, desc="writing the base model"):
            yield training_args.should_save
    finally:
        if training_args.deepspeed:
            set_hf_deepspeed_config(training_args.hf_deepspeed_config)


def build_model(model_args: ModelArguments, output_dir: Path, writes: bool = True):
    """(model, processor, base folder): the base is saved before training, so the adapter has a base to load on.
    Joined from its components and saved to OUT/base by the process that `writes`; the others load that base."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..modeling import from_components
    from ..modeling.tiny_components import TINY_CONNECTOR_SETTINGS, build_tiny_components

    remote = model_args.trust_remote_code
    built_in = model_args.model is None and model_args.vision_model is None
    if model_args.model is not None or not writes:
        source = model_args.model or str(output_dir / "base")
        with _no_loading_bars() if built_in else nullcontext():
            model = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=remote)
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=remote)
        return model, processor, source
    vision, language = model_args.vision_model, model_args.language_model
    with _no_loading_bars() if built_in else nullcontext():
        if built_in:
            vision, language = build_tiny_components(output_dir / "components")
        model, processor = from_components(
            vision,
            language,
            connector=model_args.connector,
            connector_config=TINY_CONNECTOR_SETTINGS.get(model_args.connector) if built_in else None,
            trust_remote_code=remote,
            vision_feature_layer=model_args.vision_feature_layer,
            vision_feature_select=model_args.vision_feature_select,
            image_aspect_ratio=model_args.image_aspect_ratio,
            mm_use_im_start_end=model_args.mm_use_im_start_end,
        )
        base = output_dir / "base"
        model.save_pretrained(base)
        processor.save_pretrained(base)
    return model, processor, str(base)


def fresh_connector_rate(model_args: ModelArguments, training_args) -> None:
    """Without --connector_lr, a connector built from fresh weights (no --model) trains at its own `default_lr`
    (the query connectors: 1e-3); a loaded one, such as a converted BLIP-2, at --learning_rate as any other part."""
    from ..modeling.connectors import registered_connector

    if model_args.model is None and training_args.connector_lr is None:
        training_args.connector_lr = registered_connector(model_args.connector).default_lr


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(argv)
    check(model_args, data_args, training_args)
    fresh_connector_rate(model_args, training_args)

    from transformers import set_seed

    from ..trainer import VisionBridgeTrainer, load_training_data
    from ..trainer.digits import digits_files, write_digits_data
    from ..trainer.evaluation import evaluate
    from .common import show_answers

    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(training_args.seed)  # the fresh connector's weights too: a run is repeated by its --seed
    with _one_process_writes(training_args) as writes:
        eval_path = data_args.eval_data_path
        if data_args.data_path is None:
            kinds = tuple(kind.strip() for kind in data_args.digits_kinds.split(","))
            digits = (
                write_digits_data(output_dir / "digits", kinds=kinds) if writes else digits_files(output_dir / "digits")
            )
            data_path, eval_path = digits["train"], eval_path or digits["held_out"]
            if writes:
                print(f"built-in task: {data_path} (training) and {digits['held_out']} (held out, never trained on)")
        else:
            data_path = data_args.data_path
        model, processor, base = build_model(model_args, output_dir, writes)
    try:
        train_data = load_training_data(
            data_path, data_args.image_folder, format=data_args.data_format, on_bad_sample=training_args.on_bad_sample
        )
    except (ValueError, ImportError) as error:
        raise UsageError(str(error)) from None

    trainer = VisionBridgeTrainer(model=model, args=training_args, train_dataset=train_data, processing_class=processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    first = trainer.is_world_process_zero()
    if first:
        print(f"saved the {'adapter' if training_args.uses_lora else 'model'} to {output_dir} (base model: {base})")
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=base if not Path(base).exists() else None)

    if training_args.stage == "qformer_pretrain":
        # The LLM has not seen the Q-Former yet: there is nothing to ask it until the next stage.
        if first:
            print(f"next: visionbridge train --model {output_dir} ... (the Q-Former's LLM stage)")
        return
    if eval_path is not None:
        # Every process generates every answer: under ZeRO-3 and FSDP each forward gathers the weights from all of
        # them. The first one writes the report.
        eval_data = load_training_data(eval_path, data_args.image_folder, format=data_args.data_format)
        report = evaluate(
            trainer.model, processor, eval_data, max_new_tokens=data_args.eval_max_new_tokens, progress=first
        )
        if first:
            report_path = output_dir / "eval_report.json"
            report_path.write_text(json.dumps({"data": str(eval_path), **report}, indent=1))
            show_answers(eval_data, report)
            print(f"report: {report_path}")
