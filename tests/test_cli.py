"""The `visionbridge` command: train on the built-in task, chat through stdin, merge, eval, and every --help."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

import visionbridge
from visionbridge.cli import COMMANDS, main
from visionbridge.cli.chat import ChatSession, handle
from visionbridge.cli.common import load_for_inference
from visionbridge.cli.train import parse_arguments
from visionbridge.trainer.digits import split_indices, write_digits_data

# What .ci/run counts as a warning line in the demo's output.
WARNING_LINE = re.compile(r"warn|deprecat|\[transformers\]|falling back", re.IGNORECASE)
SHORT_RUN = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run of `visionbridge train` on the built-in task: its output folder (adapter, base/, digits/)."""
    out = tmp_path_factory.mktemp("train")
    flags = ["--lr_scheduler_type", "cosine", "--weight_decay", "0.0", "--warmup_ratio", "0.03"]
    main(["train", "--output_dir", str(out), *SHORT_RUN, *flags, "--eval_max_new_tokens", "2"])
    return out


def test_train_runs_the_builtin_task_with_flags_it_does_not_name(trained):
    assert (trained / "adapter_model.safetensors").is_file() and (trained / "base" / "config.json").is_file()
    report = json.loads((trained / "eval_report.json").read_text())
    held_out = json.loads((trained / "digits" / "held_out.json").read_text())
    assert report["count"] == len(held_out) and 0 <= report["accuracy"] <= 1
    assert report["data"].endswith("held_out.json")


def test_training_arguments_flags_parse_including_warmup_ratio(tmp_path):
    flags = ["--lr_scheduler_type", "cosine", "--weight_decay", "0.0", "--warmup_ratio", "0.03"]
    model_args, data_args, args = parse_arguments(["--output_dir", str(tmp_path), "--connector", "resampler", *flags])
    assert model_args.connector == "resampler" and data_args.data_path is None
    assert args.lr_scheduler_type == "cosine" and args.weight_decay == 0.0
    assert args.get_warmup_steps(1000) == 30  # on 5.x, through the fractional warmup_steps


def test_the_held_out_digits_are_never_trained_on(tmp_path):
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, held_out = split_indices(labels)
    assert not set(train) & set(held_out) and len(train) + len(held_out) == len(labels)
    assert set(labels[held_out]) == set(range(10))
    files = write_digits_data(tmp_path, kinds=("question", "caption"))
    images = {part: {r["image"] for r in json.loads(files[part].read_text())} for part in ("train", "held_out")}
    assert images["train"] and images["held_out"] and not images["train"] & images["held_out"]


def test_chat_keeps_history_and_takes_new_images(trained):
    model, processor = load_for_inference(str(trained / "base"), str(trained))
    session = ChatSession(model, processor, max_new_tokens=3)
    image = trained / "digits" / "images" / sorted(p.name for p in (trained / "digits" / "images").iterdir())[0]
    session.add_image(str(image))
    first = session.ask("What digit is this?")
    session.add_image(str(image))
    session.ask("And this one?")
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"][0]["text"] == first
    assert sum(part["type"] == "image" for m in session.messages for part in m["content"]) == 2
    session.reset()
    assert session.messages == [] and session.pending == []


def test_chat_driven_through_stdin(trained):
    image = next((trained / "digits" / "images").iterdir())
    script = (
        f"What digit is this?\n/help\n/image {image}\nAnd this?\n/image missing.png\nIs <image> a 7?\n/fly\n"
        f"/replace {image}\n/reset\nHello?\n/quit\nnever read\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "visionbridge", "chat", str(trained / "base"), "--adapter", str(trained)]
        + ["--image", str(image), "--max_new_tokens", "3"],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("assistant: ") == 3  # the three questions; /help and the bad lines reach no model
    assert "/replace PATH" in run.stdout and "/image PATH" in run.stdout  # /help lists the commands
    assert f"[image {image} will be shown" in run.stdout and "[/image missing.png does not exist]" in run.stdout
    assert "[a question cannot hold <image>, the image placeholder" in run.stdout
    assert "[unknown command /fly; /help lists the commands]" in run.stdout
    assert f"[image {image} replaces the last picture]" in run.stdout
    assert "[history and images cleared]" in run.stdout


def test_merge_checks_logits_and_writes_a_loadable_folder(trained, tmp_path):
    main(["merge", str(trained / "base"), str(trained), str(tmp_path / "merged")])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the partial folder was renamed
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    adapted, processor = load_for_inference(str(trained / "base"), str(trained))
    batch = processor(images=[Image.new("RGB", (32, 32), "gray")], text=["<image>\nWhat digit is this?"])
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, adapted(**batch).logits, atol=1e-4)
    assert (tmp_path / "merged" / "processor_config.json").is_file() or (
        tmp_path / "merged" / "preprocessor_config.json"
    ).is_file()
    with pytest.raises(SystemExit) as exit_:
        main(["merge", str(trained / "base"), str(trained), str(tmp_path / "merged")])
    assert exit_.value.code == 2


def test_eval_writes_a_report(trained, tmp_path):
    report_path = tmp_path / "report.json"
    data = trained / "digits" / "held_out.json"
    records = json.loads(data.read_text())[:6]
    (trained / "digits" / "six.json").write_text(json.dumps(records))
    main(
        ["eval", str(trained / "base"), "--adapter", str(trained), "--data_path", str(trained / "digits" / "six.json")]
        + ["--output", str(report_path), "--max_new_tokens", "2"]
    )
    report = json.loads(report_path.read_text())
    assert report["count"] == 6 and len(report["samples"]) == 6
    assert {"accuracy", "exact_match", "caption_overlap"} <= set(report)
    assert [row["reference"] for row in report["samples"]] == [r["conversations"][1]["value"] for r in records]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_complete_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    expected = {
        "train": ["--vision_model", "--language_model", "--connector", "--data_path", "--lora_r", "--connector_lr"],
        "chat": ["--adapter", "--image", "/image", "/replace", "/reset", "/help", "/quit"],
        "merge": ["base", "adapter", "destination", "--dtype"],
        "convert": ["--from", "--to", "source", "destination"],
        "eval": ["--adapter", "--data_path", "--output"],
    }[command]
    assert all(option in text for option in expected), text[:500]


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fly"])
    assert exit_.value.code == 2 and "unknown command 'fly'" in capsys.readouterr().err
    main([])
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)


def test_the_package_runs_as_a_module():
    run = subprocess.run([sys.executable, "-m", "visionbridge", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "merge" in run.stdout
    assert Path(sys.executable).with_name("visionbridge").is_file()  # the console script is installed


def test_boxes_round_trip_and_draw(photos):
    from visionbridge import draw_boxes, parse_boxes
    from visionbridge.processing import format_box

    image = photos[0]  # 640x427
    text = "It is " + format_box("the roof", (64, 42.7, 320, 213.5), image.size) + " here."
    assert text.endswith("<ref>the roof</ref><box>(100,100),(500,500)</box> here.")
    (box,) = parse_boxes(text, image.size)
    assert box.ref == "the roof" and (box.x1, box.y1, box.x2, box.y2) == pytest.approx((64, 42.7, 320, 213.5))
    second = parse_boxes(text + "<box>(0,0),(10,10)</box>", image.size)[1]
    assert second.ref == "the roof"  # a box without its own phrase takes the previous one's
    drawn = draw_boxes(image, text, color="red", width=2)
    assert drawn.getpixel((200, 43)) == (255, 0, 0) and image.getpixel((200, 43)) != (255, 0, 0)
    assert drawn.getpixel((200, 120)) == image.getpixel((200, 120))  # inside the box: untouched
    with pytest.raises(ValueError, match="outside"):
        parse_boxes("<box>(0,0),(1000,5)</box>", image.size)


def test_scores_follow_the_vqa_and_caption_conventions():
    from visionbridge.trainer.evaluation import scores

    assert scores("It is 7.", "7") == {"exact_match": 0.0, "accuracy": 1.0, "caption_overlap": pytest.approx(0.5)}
    assert scores("The 7", "7")["exact_match"] == 1.0  # articles and punctuation do not count
    assert scores("17", "7")["accuracy"] == 0.0  # whole words only
    assert scores("a red flower", "A red flower.")["caption_overlap"] == 1.0


def test_an_adapter_folder_holds_a_usable_processor(trained):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(trained, trust_remote_code=True)  # no config.json beside it
    base = AutoProcessor.from_pretrained(trained / "base", trust_remote_code=True)
    assert processor.image_seq_length == base.image_seq_length and processor.image_token_id == base.image_token_id


def test_chat_lines_that_fail_leave_the_conversation_as_it_was(trained, monkeypatch):
    model, processor = load_for_inference(str(trained / "base"), str(trained))
    session = ChatSession(model, processor, max_new_tokens=2)
    images = sorted((trained / "digits" / "images").iterdir())
    out = io.StringIO()
    assert handle(session, "/replace " + str(images[0]), out) and "no picture to replace yet" in out.getvalue()
    handle(session, f"/image {images[0]}", out)
    handle(session, "What digit is this?", out)
    first = [dict(message) for message in session.messages]
    shown = session.messages[0]["content"][0]["image"]

    monkeypatch.setattr("visionbridge.modeling.chat.respond", _fails)
    handle(session, f"/image {images[1]}", out)
    assert handle(session, "And this one?", out)  # the answer fails: the session goes on
    assert "[no answer: RuntimeError: out of memory; the conversation is kept]" in out.getvalue()
    assert session.messages == first and len(session.pending) == 1  # nothing lost, the new picture still waits
    monkeypatch.undo()

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 32x32 digits are now over the limit
    handle(session, f"/image {images[2]}", out)
    handle(session, f"/replace {images[2]}", out)
    assert out.getvalue().count("cannot be read as an image") == 2 and len(session.pending) == 1
    monkeypatch.undo()

    handle(session, f"/replace {images[2]}", out)  # in place of the waiting picture
    assert len(session.pending) == 1 and session.pending[0].tobytes() == Image.open(images[2]).convert("RGB").tobytes()
    session.pending = []
    handle(session, f"/replace {images[3]}", out)  # nothing waits: in place of the last one talked about
    assert session.messages[0]["content"][0]["image"] is not shown and len(session.messages) == 2


def _fails(*args, **kwargs):
    raise RuntimeError("out of memory")


def test_the_first_chat_answer_raises_no_warning(trained):
    model, processor = load_for_inference(str(trained / "base"), str(trained))
    session = ChatSession(model, processor, max_new_tokens=3)
    session.add_image(str(next((trained / "digits" / "images").iterdir())))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.ask("What digit is this?", stream=io.StringIO())
        session.ask("Are you sure?", stream=io.StringIO())
    assert [str(warning.message) for warning in caught] == []


def test_eval_writes_its_report_beside_the_adapter(trained, tmp_path, monkeypatch):
    records = json.loads((trained / "digits" / "held_out.json").read_text())[:3]
    (trained / "digits" / "three.json").write_text(json.dumps(records))
    monkeypatch.chdir(tmp_path)
    main(
        [
            "eval",
            str(trained / "base"),
            "--adapter",
            str(trained),
            "--data_path",
            str(trained / "digits" / "three.json"),
        ]
    )
    assert not list(tmp_path.iterdir())  # nothing in the current folder
    assert json.loads((trained / "eval_report.json").read_text())["count"] == 3


def test_saved_adapters_and_merged_models_carry_the_model_card(trained, tmp_path):
    adapter_card = (trained / "README.md").read_text()
    assert "[More Information Needed]" not in adapter_card and "base_model: ''" not in adapter_card
    assert "pipeline_tag: image-text-to-text" in adapter_card and "library_name: peft" in adapter_card
    assert "| stage | instruct |" in adapter_card and "LoRA adapter together with the trained connector" in adapter_card
    main(["merge", str(trained / "base"), str(trained), str(tmp_path / "merged")])
    merged_card = (tmp_path / "merged" / "README.md").read_text()
    assert "library_name: transformers" in merged_card and "pipeline_tag: image-text-to-text" in merged_card
    assert "| stage | instruct |" in merged_card  # read from the adapter's training_args.json
    assert 'from_pretrained("merged", trust_remote_code=True)' in merged_card


def test_a_training_run_prints_no_warning_lines(tmp_path):
    """What the demo prints, on a short run: the progress bar, the loss lines and the result, no warnings."""
    run = subprocess.run(
        [sys.executable, "-m", "visionbridge", "train", "--output_dir", str(tmp_path / "run"), *SHORT_RUN]
        + ["--logging_steps", "1", "--eval_max_new_tokens", "2", "--lr_scheduler_type", "cosine"]
        + ["--warmup_ratio", "0.03"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert "'loss'" in output and "held-out samples:" in output
    assert [line for line in output.splitlines() if WARNING_LINE.search(line)] == []


def test_the_readme_follow_up_commands_run_as_written(trained, tmp_path, monkeypatch):
    """The commands the README gives after the demo, in the folder the demo leaves (outputs/digits)."""
    readme = (Path(visionbridge.__file__).resolve().parent / "README.md").read_text()
    block = readme[readme.index("Then talk to it") :]
    block = block[block.index("```bash\n") + 8 : block.index("```", block.index("```bash\n") + 8)]
    serving = readme[readme.index("## Serving") :]
    serving = serving[serving.index("```bash\n") + 8 : serving.index("```", serving.index("```bash\n") + 8)]
    lines = (block + serving).replace("\\\n", " ").splitlines()
    assert lines[0] == "source .venv/bin/activate"
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "digits").symlink_to(trained)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What digit is this?\n"))
    ran = []
    for line in lines[1:]:
        argv = shlex.split(line)
        if argv[:2] == ["visionbridge", "train"]:
            continue  # with real checkpoints from the Hub, which this machine cannot reach
        main(argv[1:])
        ran.append(argv[1])
    assert ran == ["chat", "merge", "eval", "convert"]
    assert (tmp_path / "outputs" / "digits-merged" / "README.md").is_file()
    assert (tmp_path / "outputs" / "digits-llava" / "config.json").is_file()
