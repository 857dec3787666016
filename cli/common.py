"""What the commands share once their arguments are checked: loading a model (with an adapter) for inference,
writing a folder whole with its model card, and showing answers next to their images."""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from .. import register_auto_classes
from ..modeling.atomic_save import staged_folder
from ..modeling.saving import MODEL_FILES
from .usage import UsageError


def load_for_inference(model: str, adapter: str | None = None, trust_remote_code: bool = False, dtype: str = "auto"):
    """(model, processor) from a VisionBridge folder or Hub repo, with a LoRA adapter on top when given. The
    processor comes from the adapter when it was saved with one (its tokenizer may have grown). A model or adapter
    that cannot be found is a UsageError."""
    register_auto_classes()
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(
            model, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise UsageError(f"cannot load the model {model}: {_first_line(error)}") from None
    processor_source = model
    if adapter is not None:
        from peft import PeftModel

        try:
            loaded = PeftModel.from_pretrained(loaded, adapter)
        except OSError as error:
            raise UsageError(f"cannot load the adapter {adapter}: {_first_line(error)}") from None
        if any((Path(adapter) / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
            processor_source = adapter
    processor = AutoProcessor.from_pretrained(processor_source, trust_remote_code=trust_remote_code)
    return loaded.eval(), processor


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def training_arguments(adapter: str | Path):
    """The training arguments saved beside an adapter (training_args.json) as attributes, or None."""
    path = Path(adapter) / "training_args.json"
    return SimpleNamespace(**json.loads(path.read_text())) if path.is_file() else None


def save_complete(destination: str | Path, model, processor, args=None) -> None:
    """Save `model`, `processor` and a README.md model card (`args`: the training arguments, when known) into
    `destination` through a hidden sibling folder moved into place at the end, so an interrupted save never leaves
    a folder that looks complete."""
    from ..trainer.model_card import render_model_card

    with staged_folder(destination, stale=MODEL_FILES) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        render_model_card(model, Path(destination).name, args).save(Path(staging) / "README.md")


_SHADES = " .:-=+*#%@"


def ascii_image(image, width: int = 16, height: int = 8) -> list[str]:
    """A terminal sketch of `image`: `height` rows of `width` characters, darker pixels as denser marks."""
    gray = image.convert("L").resize((width, height))
    pixels = list(gray.tobytes())
    rows = [pixels[row * width : (row + 1) * width] for row in range(height)]
    return ["".join(_SHADES[(255 - value) * (len(_SHADES) - 1) // 255] for value in row) for row in rows]


def show_answers(samples, report: dict, count: int = 5) -> None:
    """Print the scores of an `evaluate` report and its first `count` answers beside their images."""
    print(
        f"held-out samples: {report['count']}  accuracy: {report['accuracy']:.3f}  "
        f"exact match: {report['exact_match']:.3f}  caption overlap: {report['caption_overlap']:.3f}"
    )
    for row in report["samples"][:count]:
        images = samples[row["index"]]["images"]
        sketch = ascii_image(images[0]) if images else []
        lines = [f"expected: {row['reference']!r}", f"answer:   {row['answer']!r}"]
        for line in range(max(len(sketch), len(lines))):
            left = sketch[line] if line < len(sketch) else " " * 16
            print(f"  {left}   {lines[line] if line < len(lines) else ''}".rstrip())
        print()
