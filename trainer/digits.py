"""The built-in task: scikit-learn's 1,797 real handwritten digits as chat data on disk.

The digits are split once, by a fixed seeded permutation stratified by label, into a training part and a held-out
part that no training file ever contains. `write_digits_data` writes the images as PNG files and LLaVA-format
JSON files for each part, so the built-in task goes through `load_training_data` as a user's data does.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

QUESTION = "What digit is this?"
CAPTION_PROMPT = "Write a short caption for the image."
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KINDS = ("question", "caption")
PARTS = ("train", "held_out")


def sklearn_datasets():
    """scikit-learn's datasets module, or an ImportError that names the extra to install."""
    try:
        from sklearn import datasets
    except ImportError as error:
        raise ImportError(
            "The built-in digits task needs scikit-learn, which is not installed: pip install 'visionbridge[demo]'."
        ) from error
    return datasets


def split_indices(labels: np.ndarray, held_out_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held_out) indices of `labels`: disjoint, together all of them, each label held out in proportion."""
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * held_out_fraction)
        held_out += members[:cut].tolist()
        train += members[cut:].tolist()
    return sorted(train), sorted(held_out)


def digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 scikit-learn digit (values 0..16, ink high) as a 32x32 grayscale picture, dark ink on white."""
    gray = (255 - pixels * 255 / 16).astype("uint8")
    return Image.fromarray(gray).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB")


def answer_for(kind: str, label: int) -> str:
    return str(label) if kind == "question" else f"A handwritten digit {DIGIT_WORDS[label]}."


def digits_files(folder: str | Path) -> dict[str, Path]:
    """{"train": path, "held_out": path}: the data files `write_digits_data` writes under `folder`."""
    return {part: Path(folder) / f"{part}.json" for part in PARTS}


def write_digits_data(folder: str | Path, kinds: tuple[str, ...] = ("question",), limit: int | None = None) -> dict:
    """Write images/ and train.json + held_out.json (LLaVA format, one record per digit and kind) under `folder`.

    `limit` caps the records of each part (the first ones of a fixed shuffle, so every label appears).
    Returns {"train": path, "held_out": path, "labels": {"train": [...], "held_out": [...]}}.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"Unknown digit task kinds {sorted(unknown)}; choose from {KINDS}.")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    digits = sklearn_datasets().load_digits()
    result = {"labels": {}}
    for part, indices in zip(PARTS, split_indices(digits.target), strict=True):
        indices = np.random.default_rng(1).permutation(indices)[:limit].tolist()
        records, labels = [], []
        for index in indices:
            name = f"images/digit-{index:04d}.png"
            if not (folder / name).exists():
                digit_image(digits.images[index]).save(folder / name)
            label = int(digits.target[index])
            for kind in kinds:
                prompt = QUESTION if kind == "question" else CAPTION_PROMPT
                conversation = [{"from": "human", "value": f"<image>\n{prompt}"}]
                conversation.append({"from": "gpt", "value": answer_for(kind, label)})
                records.append({"id": f"digit-{index}-{kind}", "image": name, "conversations": conversation})
                labels.append(label)
        path = digits_files(folder)[part]
        path.write_text(json.dumps(records, indent=1))
        result[part] = path
        result["labels"][part] = labels
    return result
