import json
from pathlib import Path

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_sample_images

from visionbridge.trainer.data import VisionBridgeDataset, load_training_data


@pytest.fixture
def folder(tmp_path):
    """tmp_path/images holding a real JPEG (china.jpg, RGB 640x427) and a tiny grayscale PNG (gray.png, L 5x3)."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(load_sample_images().images[0]).save(images / "china.jpg")
    Image.new("L", (5, 3), 128).save(images / "sub" / "gray.png")
    return images


def _write(path, records):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        path.write_text(json.dumps(records))
    return path


def _turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


LLAVA_RECORDS = [
    {
        "id": "multi-turn",
        "image": "china.jpg",
        "conversations": _turns(
            ("human", "<image>\nWhat is in the picture?"), ("gpt", "A temple."), ("human", "Colour?"), ("gpt", "Red.")
        ),
    },
    {
        "id": "two-images",
        "image": ["china.jpg", "sub/gray.png"],
        "conversations": _turns(("system", "Be brief."), ("human", "<image> and <image>: same?"), ("gpt", "No.")),
    },
    {"id": "text-only", "conversations": _turns(("human", "Hello?"), ("gpt", "Hi."))},
    {
        "id": "no-placeholder",
        "image": ["china.jpg", "china.jpg"],
        "conversations": _turns(("human", "Q"), ("gpt", "A")),
    },
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_llava(tmp_path, folder, suffix):
    data = load_training_data(_write(tmp_path / f"llava{suffix}", LLAVA_RECORDS), image_folder=folder)
    assert len(data) == 4
    first, second, text_only, prepended = (data[i] for i in range(4))
    assert first["messages"] == [
        {"role": "user", "content": "<image>\nWhat is in the picture?"},
        {"role": "assistant", "content": "A temple."},
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "Red."},
    ]
    assert [(image.size, image.mode) for image in first["images"]] == [((640, 427), "RGB")]
    assert [message["role"] for message in second["messages"]] == ["system", "user", "assistant"]
    # Reading order, and the grayscale image keeps its mode: RGB conversion is the processor's job.
    assert [(image.size, image.mode) for image in second["images"]] == [((640, 427), "RGB"), ((5, 3), "L")]
    assert text_only == {
        "messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}],
        "images": [],
    }
    assert prepended["messages"][0]["content"] == "<image>\n<image>\nQ"
    assert len(prepended["images"]) == 2


def test_llava_absolute_paths_and_default_folder(tmp_path, folder):
    records = [
        {"image": str(folder / "china.jpg"), "conversations": _turns(("human", "<image>"), ("gpt", "a"))},
        {"image": "images/sub/gray.png", "conversations": _turns(("human", "<image>"), ("gpt", "b"))},
    ]
    # No image_folder: relative paths are read from the data file's folder.
    data = load_training_data(_write(tmp_path / "data.json", records))
    assert data[0]["images"][0].size == (640, 427)
    assert data[1]["images"][0].mode == "L"


def test_item_is_a_copy(tmp_path, folder):
    data = load_training_data(_write(tmp_path / "llava.json", LLAVA_RECORDS[2:3]))
    data[0]["messages"][0]["content"] = "changed"
    assert data[0]["messages"][0]["content"] == "Hello?"


QWEN_RECORDS = [
    {
        "id": "two-pictures",
        "conversations": _turns(
            ("user", "Picture 1: <img>china.jpg</img>\nPicture 2: <img>sub/gray.png</img>\nWhat differs?"),
            ("assistant", "Colour."),
            ("user", "Picture 3: <img>china.jpg</img>\nAnd this one?"),
            ("assistant", "Same as the first."),
        ),
    },
    {
        "id": "grounding",
        "conversations": _turns(
            ("system", "You are helpful."),
            ("user", "Picture 1: <img>china.jpg</img>\nWhere is the roof?"),
            ("assistant", "<ref>the roof</ref><box>(12,34),(560,780)</box>"),
        ),
    },
]


def test_qwen(tmp_path, folder):
    data = load_training_data(_write(tmp_path / "qwen.json", QWEN_RECORDS), image_folder=folder)
    multi, grounding = data[0], data[1]
    assert multi["messages"][0] == {
        "role": "user",
        "content": "Picture 1: <image>\nPicture 2: <image>\nWhat differs?",
    }
    assert multi["messages"][2]["content"] == "Picture 3: <image>\nAnd this one?"
    assert [image.mode for image in multi["images"]] == ["RGB", "L", "RGB"]
    assert [message["role"] for message in grounding["messages"]] == ["system", "user", "assistant"]
    assert grounding["messages"][2]["content"] == "<ref>the roof</ref><box>(12,34),(560,780)</box>"
    assert len(grounding["images"]) == 1


@settings(max_examples=50, deadline=None)
@given(
    paths=st.lists(st.from_regex(r"[a-z0-9_][a-z0-9_/]{0,11}\.jpg", fullmatch=True), min_size=1, max_size=5),
    filler=st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=["Cs"]), max_size=20),
)
def test_qwen_tags_become_placeholders_in_order(tmp_path_factory, paths, filler):
    text = filler.join(f"Picture {n}: <img>{path}</img>" for n, path in enumerate(paths, start=1))
    record = {"conversations": _turns(("user", text), ("assistant", "ok"))}
    file = _write(tmp_path_factory.mktemp("qwen") / "qwen.json", [record])
    data = load_training_data(file, image_folder="/imgs", format="qwen")
    assert data.records[0]["images"] == [str(Path("/imgs", path)) for path in paths]
    assert data.records[0]["messages"][0]["content"].count("<image>") == len(paths)
    assert "<img>" not in data.records[0]["messages"][0]["content"]


def _captions(folder):
    images = [Image.open(folder / "china.jpg"), Image.open(folder / "sub" / "gray.png")]
    return {"image": images, "text": ["a temple", "a grey square"]}


def test_datasets_object(folder):
    table = datasets.Dataset.from_dict(_captions(folder))
    assert isinstance(table.features["image"], datasets.Image)
    data = load_training_data(table)
    assert data[0]["messages"] == [
        {"role": "user", "content": "<image>"},
        {"role": "assistant", "content": "a temple"},
    ]
    assert [(image.size, image.mode) for image in data[0]["images"] + data[1]["images"]] == [
        ((640, 427), "RGB"),
        ((5, 3), "L"),
    ]
    prompted = load_training_data(table, prompt="Describe the picture.")
    assert prompted[1]["messages"][0]["content"] == "<image>\nDescribe the picture."


def test_datasets_folder_of_paths(tmp_path, folder):
    table = datasets.Dataset.from_dict({"image": ["china.jpg", "sub/gray.png"], "caption": ["temple", "grey"]})
    table.save_to_disk(str(tmp_path / "saved"))
    data = load_training_data(tmp_path / "saved", image_folder=folder)
    assert data[1]["messages"][1] == {"role": "assistant", "content": "grey"}
    assert data[1]["images"][0].mode == "L"


@pytest.mark.parametrize(
    ("name", "records", "image_folder", "fmt"),
    [
        ("llava.json", LLAVA_RECORDS, "images", "llava"),
        ("llava.jsonl", LLAVA_RECORDS, "images", "llava"),
        ("qwen.json", QWEN_RECORDS, "images", "qwen"),
        ("qwen-text.json", [{"conversations": _turns(("user", "Hi"), ("assistant", "Yo"))}], None, "qwen"),
        ("saved", None, None, "datasets"),
    ],
)
def test_auto_detection_matches_explicit_format(tmp_path, folder, name, records, image_folder, fmt):
    if records is None:
        datasets.Dataset.from_dict(_captions(folder)).save_to_disk(str(tmp_path / name))
        path = tmp_path / name
    else:
        path = _write(tmp_path / name, records)
    image_folder = tmp_path / image_folder if image_folder else None
    auto = load_training_data(path, image_folder=image_folder)
    explicit = load_training_data(path, image_folder=image_folder, format=fmt)
    assert type(auto) is type(explicit)
    assert auto.records == explicit.records


def test_wrong_explicit_format_is_caught(tmp_path):
    # A LLaVA file read as Qwen-VL has no <img> tags for its images: the counts disagree.
    path = _write(tmp_path / "llava.json", LLAVA_RECORDS[:1])
    with pytest.raises(ValueError, match=r"placeholders: 1, images: 0"):
        load_training_data(path, format="qwen")


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"'sharegpt'.*llava, qwen, datasets"):
        load_training_data(_write(tmp_path / "a.json", LLAVA_RECORDS), format="sharegpt")


def test_missing_image_names_path_record_and_file(tmp_path, folder):
    records = [
        LLAVA_RECORDS[2],
        {"image": "nowhere/lost.jpg", "conversations": _turns(("human", "<image>"), ("gpt", "a"))},
    ]
    path = _write(tmp_path / "llava.json", records)
    data = load_training_data(path, image_folder=folder)  # loading opens no image, so it succeeds
    with pytest.raises(FileNotFoundError) as error:
        data[1]
    assert str(folder / "nowhere" / "lost.jpg") in str(error.value)
    assert "record 1" in str(error.value) and str(path) in str(error.value)


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"conversations": [}]')
    with pytest.raises(ValueError, match=rf"{path} is not valid JSON.*line 1"):
        load_training_data(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text(json.dumps(LLAVA_RECORDS[2]) + "\n\n" + '{"id": 1,\n')
    with pytest.raises(ValueError, match=rf"{lines}, line 3: not valid JSON"):
        load_training_data(lines)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "x"}, "has no conversations"),
        ({"conversations": []}, "has no conversations"),
        ({"conversations": _turns(("human", "a"), ("human", "b"), ("gpt", "c"))}, "turn 1 is 'user' where 'assistant'"),
        ({"conversations": _turns(("gpt", "a"), ("human", "b"))}, "turn 0 is 'assistant' where 'user'"),
        ({"conversations": _turns(("system", "s"), ("human", "q"))}, "has no assistant answer"),
        ({"conversations": _turns(("human", "q"), ("gpt", "a"), ("human", "q2"))}, "no assistant answer"),
        ({"conversations": [{"from": "robot", "value": "hi"}]}, "turn 0: expected"),
        ({"conversations": [{"from": "human"}]}, "turn 0: expected"),
        (
            {"image": "a.jpg", "conversations": _turns(("human", "<image> <image>"), ("gpt", "a"))},
            "placeholders: 2, images: 1",
        ),
        (
            {"image": ["a.jpg", "b.jpg"], "conversations": _turns(("human", "<image>"), ("gpt", "a"))},
            "placeholders: 1, images: 2",
        ),
    ],
)
def test_bad_llava_record_names_record_and_file(tmp_path, record, message):
    path = _write(tmp_path / "llava.json", [LLAVA_RECORDS[2], record])
    with pytest.raises(ValueError, match="record 1 of") as error:
        load_training_data(path, format="llava")
    assert message in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("<img>a.jpg</img> and <img>b.jpg", "placeholders: 2, images (<img>PATH</img> with a path): 1"),
        ("<img></img>", "placeholders: 1, images (<img>PATH</img> with a path): 0"),
        ("<image> <img>a.jpg</img>", "placeholders: 2, images: 1"),
    ],
)
def test_bad_qwen_placeholders(tmp_path, text, counts):
    path = _write(tmp_path / "qwen.json", [{"conversations": _turns(("user", text), ("assistant", "a"))}])
    with pytest.raises(ValueError, match="record 0 of") as error:
        load_training_data(path, format="qwen")
    assert counts in str(error.value) and str(path) in str(error.value)


def test_bad_datasets_inputs(tmp_path, folder):
    with pytest.raises(ValueError, match=r"needs an 'image' column and a 'text' or 'caption' column"):
        load_training_data(datasets.Dataset.from_dict({"image": ["a.jpg"], "label": [1]}))
    with pytest.raises(ValueError, match=r"record 1 of .* no assistant answer: 'text' is None"):
        load_training_data(datasets.Dataset.from_dict({"image": ["a.jpg", "b.jpg"], "text": ["x", None]}))
    with pytest.raises(ValueError, match=r"not one written by Dataset.save_to_disk"):
        load_training_data(folder)
    with pytest.raises(ValueError, match=r"format='llava' reads a JSON file"):
        load_training_data(datasets.Dataset.from_dict(_captions(folder)), format="llava")
    with pytest.raises(ValueError, match=r"prompt is the question of captioning rows"):
        load_training_data(_write(tmp_path / "a.json", LLAVA_RECORDS), prompt="Describe.")
    with pytest.raises(FileNotFoundError, match=r"missing.json does not exist"):
        load_training_data(tmp_path / "missing.json")


def test_skip_leaves_out_bad_datasets_rows_and_keeps_their_places(folder):
    table = datasets.Dataset.from_dict({"image": ["a.jpg", "", "b.jpg", "c.jpg"], "text": ["x", "y", "  ", "z"]})
    data = load_training_data(table, image_folder=folder, on_bad_sample="skip")
    assert len(data) == 4 and sorted(data.errors) == [1, 2]
    assert "no image path" in data.errors[1] and "no assistant answer" in data.errors[2]
    with pytest.raises(ValueError, match="record 2 of .* no assistant answer"):
        load_training_data(table, image_folder=folder)


def test_lengths_grow_with_text_and_images_without_opening_files(tmp_path):
    records = [
        {"conversations": _turns(("human", "abcd"), ("gpt", "efgh"))},
        {"conversations": _turns(("human", "abcd" * 10), ("gpt", "efgh"))},
        {"image": "gone.jpg", "conversations": _turns(("human", "<image>abcd"), ("gpt", "efgh"))},
        {"image": ["gone.jpg", "gone.png"], "conversations": _turns(("human", "<image><image>abcd"), ("gpt", "efgh"))},
    ]
    path = _write(tmp_path / "llava.json", records)
    # The image files do not exist: lengths must not look at them.
    data = load_training_data(path)
    assert data.lengths(576) == [2, 11, 4 + 576, 6 + 2 * 576]
    assert data.lengths(0) == [2, 11, 4, 6]
    with pytest.raises(FileNotFoundError):
        data[2]


def test_dataset_from_records_checks_them():
    messages = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValueError, match=r"record 0 of mine: <image> placeholders and images do not match"):
        VisionBridgeDataset([{"messages": messages, "images": []}], source="mine")
    assert len(VisionBridgeDataset([{"messages": messages, "images": ["x.jpg"]}])) == 1
