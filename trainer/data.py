"""Training data: LLaVA and Qwen-VL conversation files and captioning `datasets`, read as chat samples.

Every format becomes one sample shape, `{"messages": [{"role", "content"}, ...], "images": [PIL.Image, ...]}`,
whose contents carry one image token per image, in reading order: the processor's, once the trainer binds the data
to it, "<image>" (LLaVA's) until then. Records are checked when loaded, without opening any image; an image file
is looked for, and opened, only when its sample is read.
"""

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from torch.utils.data import Dataset
from transformers.utils import logging

from ..processing.grounding import SCALE, parse_boxes
from ..processing.images import check_pixels, open_image

if TYPE_CHECKING:
    import datasets

logger = logging.get_logger(__name__)

IMAGE_TOKEN = "<image>"  # how LLaVA files mark an image, and how records hold every format's images
FORMATS = ("llava", "qwen", "datasets")

# One map for both file formats: LLaVA says human/gpt, Qwen-VL user/assistant, and some exports mix them.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_QWEN_IMAGE = re.compile(r"<img>(.*?)</img>", re.DOTALL)
# What Pillow raises on a file it cannot decode: truncated or corrupt data (OSError, and SyntaxError or ValueError
# from some plugins) and images over Image.MAX_IMAGE_PIXELS (DecompressionBombError, which is no OSError).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def import_datasets():
    """The `datasets` package (an optional dependency), or an ImportError that names the extra to install."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "Reading a datasets Dataset or save_to_disk folder needs the datasets package, which is not installed: "
            "pip install 'visionbridge[datasets]'."
        ) from error
    return datasets


def _is_dataset(value) -> bool:
    """Whether `value` is a datasets Dataset or DatasetDict (a caller who holds one has datasets imported)."""
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(value, (datasets.Dataset, datasets.DatasetDict))


def _image_error(error: Exception, what: str) -> Exception:
    """`error` raised again as its kind, saying which image failed: a bomb stays a DecompressionBombError."""
    if isinstance(error, Image.DecompressionBombError):
        return Image.DecompressionBombError(
            f"{what} is too large to open safely: {error} If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS."
        )
    return OSError(f"Cannot read {what}: {type(error).__name__}: {error}")


def _check_boxes(messages: list[dict], where: str) -> None:
    """Qwen-VL grounding boxes must parse, with every coordinate in [0, SCALE)."""
    for turn, message in enumerate(messages):
        content = message["content"]
        if "<box>" not in content:
            continue
        try:
            found = len(parse_boxes(content, (SCALE, SCALE)))
        except ValueError as error:
            raise ValueError(f"{where}, turn {turn}: {error}") from error
        if found != content.count("<box>"):
            raise ValueError(
                f"{where}, turn {turn}: {content.count('<box>')} <box> tags but {found} boxes of the form "
                f"<box>(x1,y1),(x2,y2)</box> with integer coordinates in [0, {SCALE})."
            )


def check_answers(messages: list[dict], where: str) -> None:
    """Every assistant answer has text: a blank one would teach nothing but the end-of-turn marker."""
    for turn, message in enumerate(messages):
        content = message["content"]
        if message["role"] == "assistant" and isinstance(content, str) and not content.strip():
            raise ValueError(f"{where}, turn {turn}: the assistant answer is empty ({content!r}); give it text.")


def _check_record(record: dict, where: str) -> None:
    """Roles alternate user/assistant after an optional system turn and end on an answer; placeholders match."""
    messages = record["messages"]
    if not messages:
        raise ValueError(f"{where} has no conversations.")
    roles = [message["role"] for message in messages]
    offset = 1 if roles[0] == "system" else 0
    for turn, role in enumerate(roles[offset:]):
        expected = "user" if turn % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"{where}: turn {turn + offset} is {role!r} where {expected!r} was expected; roles must alternate "
                f"user/assistant after an optional leading system turn (roles: {roles})."
            )
    if "assistant" not in roles:
        raise ValueError(f"{where} has no assistant answer (roles: {roles}).")
    if roles[-1] != "assistant":
        raise ValueError(f"{where} ends with a user turn that has no assistant answer (roles: {roles}).")
    check_answers(messages, where)
    placeholders = sum(message["content"].count(IMAGE_TOKEN) for message in messages)
    if placeholders != len(record["images"]):
        raise ValueError(
            f"{where}: {IMAGE_TOKEN} placeholders and images do not match: "
            f"placeholders: {placeholders}, images: {len(record['images'])}."
        )
    _check_boxes(messages, where)


class VisionBridgeDataset(Dataset):
    """Chat samples whose images open when read: `dataset[i]` is `{"messages": [...], "images": [PIL.Image, ...]}`.

    `records` hold image paths in place of images: `{"messages": [{"role", "content"}, ...], "images": [path, ...]}`.
    They are checked here (see `_check_record`). `source` names the data in errors; `image_token` is the token
    samples mark images with (the trainer binds it to its processor's). With `on_bad_sample="skip"`, a record that
    fails its checks stays in place, so indices keep naming records, and raises its error when read (for the
    trainer to skip); `errors` are such failures found before, by record index.
    """

    def __init__(
        self,
        records: list[dict],
        source: str = "the records",
        on_bad_sample: str = "raise",
        errors: dict[int, str] | None = None,
    ):
        self.errors = dict(errors or {})
        for index, record in enumerate(records):
            if index in self.errors:
                continue
            try:
                _check_record(record, f"record {index} of {source}")
            except ValueError as error:
                if on_bad_sample == "raise":
                    raise
                self.errors[index] = str(error)
        if self.errors:
            first = "\n  ".join(self.errors[index] for index in sorted(self.errors)[:5])
            logger.warning(
                f"{len(self.errors)} of the {len(records)} records of {source} are bad and will be skipped "
                f"(on_bad_sample='skip'):\n  {first}"
            )
        self.records = records
        self.source = source
        self.image_token = IMAGE_TOKEN

    def bind(self, processor) -> "VisionBridgeDataset":
        """Mark images with the processor's image token."""
        self.image_token = processor.image_token
        return self

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if index in self.errors:
            raise ValueError(self.errors[index])
        # Copies, so a collator that edits a sample in place cannot change the next epoch's.
        messages = [
            {**message, "content": message["content"].replace(IMAGE_TOKEN, self.image_token)}
            for message in self.records[index]["messages"]
        ]
        return {"messages": messages, "images": self._open_images(index)}

    def lengths(self, image_seq_length: int) -> list[int]:
        """Estimated tokens per sample for length-grouped sampling: text characters / 4, rounded up, plus
        `image_seq_length` (the placeholders each image becomes) per image. Opens no image."""
        return [
            math.ceil(sum(len(message["content"]) for message in record["messages"]) / 4)
            + image_seq_length * len(record["images"])
            for record in self.records
        ]

    def _open_images(self, index: int) -> list[Image.Image]:
        images = []
        for path in self.records[index]["images"]:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Image {path} of record {index} in {self.source} does not exist.")
            try:
                images.append(open_image(path))
            except IMAGE_ERRORS as error:
                raise _image_error(error, f"image {path} of record {index} in {self.source}") from error
        return images


class _TableDataset(VisionBridgeDataset):
    """Captioning rows whose image column is a `datasets.Image` feature, decoded row by row on access."""

    def __init__(
        self, records: list[dict], source: str, images: "datasets.Dataset", on_bad_sample: str, errors: dict[int, str]
    ):
        super().__init__(records, source, on_bad_sample, errors)
        self._images = images

    def _open_images(self, index: int) -> list[Image.Image]:
        try:
            image = self._images[index]["image"]
        except IMAGE_ERRORS as error:
            raise _image_error(error, f"the image of row {index} of {self.source}") from error
        if not isinstance(image, Image.Image):
            raise ValueError(f"Row {index} of {self.source} has no decodable image in column 'image': {image!r:.200}.")
        try:
            check_pixels(image)
            image.load()
        except IMAGE_ERRORS as error:
            raise _image_error(error, f"the image of row {index} of {self.source}") from error
        return [image]


def _too_deep(where: str) -> ValueError:
    return ValueError(
        f"{where}: JSON nested deeper than Python's recursion limit ({sys.getrecursionlimit()}) lets it be read; a "
        "training record needs a few levels."
    )


def _read_records(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark, as some editors write, is dropped
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text: byte {error.start} is {error.object[error.start : error.end]!r}."
        ) from error
    if path.suffix == ".jsonl":
        records = []
        # Split on "\n" only: splitlines() would also cut at U+2028, which JSON strings may hold unescaped.
        for line_number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}, line {line_number}: not valid JSON ({error.msg} at column {error.colno})."
                    ) from error
                except RecursionError:
                    raise _too_deep(f"{path}, line {line_number}") from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from error
    except RecursionError:
        raise _too_deep(str(path)) from None
    if not isinstance(records, list):
        raise ValueError(f"{path} holds a JSON {type(records).__name__}; expected a list of records.")
    return records


def _messages(record: object, where: str) -> list[dict]:
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a JSON {type(record).__name__}, not an object with 'conversations'.")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where} has no conversations (expected a non-empty 'conversations' list).")
    messages = []
    for turn_index, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        role = _ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise ValueError(
                f"{where}, turn {turn_index}: expected {{'from': one of {sorted(_ROLES)}, 'value': str}}, "
                f"found {turn!r:.200}."
            )
        messages.append({"role": role, "content": turn["value"]})
    return messages


def _from_llava(record: object, where: str) -> tuple[list[dict], list[str]]:
    messages = _messages(record, where)
    image = record.get("image")
    paths = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(paths, list) or not all(isinstance(path, str) and path for path in paths):
        raise ValueError(f"{where}: 'image' must be a path or a list of paths, found {image!r:.200}.")
    if paths and not any(IMAGE_TOKEN in message["content"] for message in messages):
        # LLaVA's own loader puts an image without a placeholder before the first question; do as it does.
        first_user = next((message for message in messages if message["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = f"{IMAGE_TOKEN}\n" * len(paths) + first_user["content"]
    return messages, paths


def _from_qwen(record: object, where: str) -> tuple[list[dict], list[str]]:
    messages = _messages(record, where)
    paths = []
    for message in messages:
        tags = message["content"].count("<img>")
        found = _QWEN_IMAGE.findall(message["content"])
        if tags != len(found) or not all(path.strip() for path in found):
            raise ValueError(
                f"{where}: <img> placeholders and images do not match: "
                f"placeholders: {tags}, images (<img>PATH</img> with a path): {sum(bool(p.strip()) for p in found)}."
            )
        paths += [path.strip() for path in found]
        # "Picture N: " labels and <ref>/<box> grounding stay as written; only the tag becomes a placeholder.
        message["content"] = _QWEN_IMAGE.sub(IMAGE_TOKEN, message["content"])
    return messages, paths


def _from_either(record: object, where: str) -> tuple[list[dict], list[str]]:
    """format="auto" reads each record in its own format: Qwen-VL when it has <img> tags, LLaVA otherwise (a record
    without images reads the same either way), so one file may mix them."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    tagged = isinstance(turns, list) and any(
        isinstance(turn, dict) and isinstance(turn.get("value"), str) and "<img>" in turn["value"] for turn in turns
    )
    if not tagged:
        return _from_llava(record, where)
    if "image" in record:
        raise ValueError(
            f"{where} has both an 'image' key (LLaVA) and <img> tags (Qwen-VL); pass format='llava' or "
            "format='qwen' to read the file one way."
        )
    return _from_qwen(record, where)


def _from_table(
    table: "datasets.Dataset",
    source: str,
    image_folder: str | os.PathLike | None,
    prompt: str | None,
    on_bad_sample: str,
) -> VisionBridgeDataset:
    datasets = import_datasets()
    if isinstance(table, datasets.DatasetDict):
        raise ValueError(f"{source} holds splits {list(table)}; pass one split, e.g. dataset['train'].")
    columns = table.column_names
    text_column = next((name for name in ("text", "caption") if name in columns), None)
    if "image" not in columns or text_column is None:
        raise ValueError(f"{source} needs an 'image' column and a 'text' or 'caption' column; it has {columns}.")
    user = IMAGE_TOKEN if prompt is None else f"{IMAGE_TOKEN}\n{prompt}"
    records, errors = [], {}

    def refuse(row: int, message: str) -> None:
        if on_bad_sample == "raise":
            raise ValueError(message)
        errors[row] = message

    for row, caption in enumerate(table[text_column]):
        if not isinstance(caption, str) or not caption.strip():
            refuse(row, f"record {row} of {source} has no assistant answer: {text_column!r} is {caption!r}.")
        answer = [{"role": "user", "content": user}, {"role": "assistant", "content": caption}]
        records.append({"messages": answer, "images": [row]})
    feature = table.features["image"]
    if isinstance(feature, datasets.Image):
        return _TableDataset(records, source, table.select_columns(["image"]), on_bad_sample, errors)
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"{source}: column 'image' holds {feature}; expected a datasets.Image feature or paths.")
    for row, (record, path) in enumerate(zip(records, table["image"], strict=True)):
        if not path:
            refuse(row, f"record {row} of {source} has no image path in column 'image'.")
        record["images"] = [str(Path(image_folder, path)) if image_folder is not None and path else path]
    return VisionBridgeDataset(records, source, on_bad_sample, errors)


def load_training_data(
    path_or_dataset: "str | os.PathLike | datasets.Dataset",
    image_folder: str | os.PathLike | None = None,
    format: str = "auto",
    prompt: str | None = None,
    on_bad_sample: str = "raise",
) -> VisionBridgeDataset:
    """Read LLaVA JSON/JSONL, Qwen-VL JSON or a captioning `datasets.Dataset` (or its save_to_disk folder).

    Image paths are relative to `image_folder`, or to the data file's folder when it is None. `format="auto"`
    picks "datasets" for a Dataset or folder, and reads each record of a file in its own format: "qwen" when it has
    <img> tags, "llava" otherwise. `prompt` is the question of captioning rows. With
    `on_bad_sample="skip"`, a record that fails its checks is kept as a stand-in that raises when read (see
    VisionBridgeDataset) instead of stopping the load; a file that is not valid JSON still stops it.
    """
    if format not in ("auto", *FORMATS):
        raise ValueError(f"Unknown format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}.")
    if _is_dataset(path_or_dataset):
        if format not in ("auto", "datasets"):
            raise ValueError(f"format={format!r} reads a JSON file, but a datasets.Dataset was passed.")
        source = f"the datasets.Dataset passed in ({path_or_dataset.num_rows} rows)"
        return _from_table(path_or_dataset, source, image_folder, prompt, on_bad_sample)
    path = Path(path_or_dataset)
    if not path.exists():
        raise FileNotFoundError(f"Training data {path} does not exist.")
    if path.is_dir():
        if format not in ("auto", "datasets"):
            raise ValueError(f"format={format!r} reads a JSON file, but {path} is a folder.")
        if not any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise ValueError(f"{path} is a folder but not one written by Dataset.save_to_disk (no state.json).")
        table = import_datasets().load_from_disk(str(path))
        return _from_table(table, str(path), image_folder, prompt, on_bad_sample)
    if format == "datasets":
        raise ValueError(f"format='datasets' needs a datasets.Dataset or a save_to_disk folder; {path} is a file.")
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: expected a .json or .jsonl file, or a datasets folder.")
    if prompt is not None:
        raise ValueError("prompt is the question of captioning rows (format='datasets'); JSON records carry their own.")
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path} holds no records.")
    convert = {"auto": _from_either, "llava": _from_llava, "qwen": _from_qwen}[format]
    folder = Path(image_folder) if image_folder is not None else path.parent
    samples, errors = [], {}
    for index, record in enumerate(records):
        try:
            messages, paths = convert(record, f"record {index} of {path}")
        except ValueError as error:
            if on_bad_sample == "raise":
                raise
            messages, paths, errors[index] = [], [], str(error)
        samples.append({"messages": messages, "images": [str(folder / image) for image in paths]})
    return VisionBridgeDataset(samples, str(path), on_bad_sample, errors)
