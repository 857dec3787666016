"""Each data format, through load_training_data and the collator: the supervised tokens are exactly the answers."""

import json

import datasets
import pytest
from PIL import Image
from test_collator import decoded_answers

from visionbridge import load_training_data
from visionbridge.trainer import VisionBridgeCollator

ANSWERS = {
    "llava": ["A temple by a lake.", "Blue, with a few clouds.", "Both are photos."],
    "qwen": ["The second has a flower.", "<ref>the flower</ref><box>(120,80),(860,910)</box>"],
    "datasets": ["a temple by a lake", "a red flower"],
}


def _write_images(folder, photos) -> list[str]:
    names = []
    for index, photo in enumerate(photos):
        names.append(f"photo{index}.jpg")
        photo.resize((64, 43)).save(folder / names[-1])
    return names


def _llava_file(folder, names):
    record = {
        "id": "multi",
        "image": names,
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat is in the first picture?"},
            {"from": "gpt", "value": ANSWERS["llava"][0]},
            {"from": "human", "value": "And the sky?"},
            {"from": "gpt", "value": ANSWERS["llava"][1]},
            {"from": "human", "value": "What do they share?"},
            {"from": "gpt", "value": ANSWERS["llava"][2]},
        ],
    }
    path = folder / "llava.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def _qwen_file(folder, names):
    record = {
        "id": "identity_0",
        "conversations": [
            {
                "from": "user",
                "value": f"Picture 1: <img>{names[0]}</img>\nPicture 2: <img>{names[1]}</img>\nWhat differs?",
            },
            {"from": "assistant", "value": ANSWERS["qwen"][0]},
            {"from": "user", "value": "Where is the flower?"},
            {"from": "assistant", "value": ANSWERS["qwen"][1]},
        ],
    }
    path = folder / "qwen.json"
    path.write_text(json.dumps([record]))
    return path


@pytest.mark.parametrize("source", ["llava", "qwen", "datasets"])
def test_labels_are_exactly_the_answers_in_every_format(make_model, photos, tmp_path, source):
    model, processor = make_model()
    names = _write_images(tmp_path, photos)
    if source == "llava":
        data = load_training_data(_llava_file(tmp_path, names), image_folder=tmp_path)
    elif source == "qwen":
        data = load_training_data(_qwen_file(tmp_path, names), image_folder=tmp_path)
    else:
        table = datasets.Dataset.from_dict(
            {"image": [Image.open(tmp_path / name) for name in names], "text": ANSWERS["datasets"]}
        )
        data = load_training_data(table, prompt="Describe the picture.")
    batch = VisionBridgeCollator(processor)([data[index] for index in range(len(data))])
    assert batch["pixel_values"].shape[0] == 2
    supervised = [answer for row in batch["labels"] for answer in decoded_answers(processor, row)]
    assert supervised == ANSWERS[source]
