"""The `visionbridge` command before anything loads: --help at once and without torch, --version, and each user
mistake reported as one line with exit code 2, before any model is loaded."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

import visionbridge.modeling
from visionbridge.cli import COMMANDS, main
from visionbridge.cli.train import check, parse_arguments

HELP_SECONDS = 5  # the goal is under 2 s; the bound leaves room for a busy 2-core machine


@pytest.mark.parametrize("command", ["", *sorted(COMMANDS)])
def test_help_answers_at_once_without_loading_torch(command):
    argv = [command, "--help"] if command else ["--help"]
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "visionbridge", *argv], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: visionbridge" in run.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers.modeling_utils", "visionbridge.modeling"} & imported
    # -X importtime slows imports down: the bound is checked on a plain run
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "visionbridge", *argv], capture_output=True, timeout=60, check=True)
    elapsed = time.perf_counter() - start
    assert elapsed < HELP_SECONDS, f"visionbridge {' '.join(argv)} took {elapsed:.1f} s"


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"visionbridge {visionbridge.__version__}"


def test_train_help_shows_visionbridge_options_then_the_trainers(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    short = capsys.readouterr().out
    own = ["--stage", "--connector", "--connector_lr", "--vision_lr", "--lora_r", "--data_path", "--packing"]
    assert all(option in short for option in own) and "--help-all" in short
    assert "--num_train_epochs NUM_TRAIN_EPOCHS" not in short  # the Trainer's 600 lines wait for --help-all
    with pytest.raises(SystemExit):
        main(["train", "--help-all"])
    full = capsys.readouterr().out
    trainer_part = full.index("Trainer options (transformers")
    assert all(full.index(option) < trainer_part for option in own)
    assert full.index("--num_train_epochs", trainer_part) > trainer_part
    assert full.count("--connector_lr CONNECTOR_LR") == 1  # not listed again among the Trainer's
    for flag in ["--learning_rate", "--num_train_epochs", "--per_device_train_batch_size", "--bf16", "--save_steps"]:
        assert flag in full[trainer_part:]  # the flags that the short help names as examples exist


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: a mistake must be reported before one starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(visionbridge.modeling, "from_components", refuse)
    monkeypatch.setattr("peft.PeftModel.from_pretrained", refuse)


@pytest.fixture
def folders(tmp_path):
    """A model folder, an adapter folder, an image, a data file and a non-empty folder, none ever loaded."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "data.json").write_text("[]")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("an earlier run")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    return tmp_path


MISTAKES = [
    (["fly"], "unknown command 'fly'"),
    (["trian", "--help"], "did you mean train?"),
    (["chat", "{t}/nope/base"], "model {t}/nope/base does not exist"),
    (["chat", "{t}/adapter"], "has no config.json (an adapter folder? pass it with --adapter)"),
    (["chat", "{t}/model", "--image", "{t}/missing.png"], "--image {t}/missing.png does not exist"),
    (["chat", "{t}/model", "--image", "https://example.com/cat.png"], "not URLs: download https://example.com"),
    (["chat", "{t}/model", "--image", "{t}/data.json"], "cannot be read as an image"),
    (["chat", "{t}/model", "--dtype", "float64x"], "argument --dtype: invalid choice: 'float64x'"),
    (["chat", "{t}/model", "--imag", "{t}/photo.png"], "unknown option --imag (did you mean --image?)"),
    (["chat", "{t}/model", "--adapter", "{t}/model"], "--adapter {t}/model has no adapter_config.json"),
    (["eval", "{t}/model", "--data_path", "{t}/missing.json"], "--data_path {t}/missing.json does not exist"),
    (["eval", "org/model", "--data_path", "{t}/data.json"], "say where the report goes with --output"),
    (["eval", "{t}/model", "--data_path", "{t}/data.json", "--output", "{t}/no/r.json"], "does not exist"),
    (["merge", "{t}/model", "{t}/adapter", "{t}/full"], "destination {t}/full exists and is not empty"),
    (["merge", "{t}/model", "{t}/model", "{t}/new"], "adapter {t}/model has no adapter_config.json"),
    (["convert", "--to", "llava", "{t}/nope/vb", "{t}/new"], "source {t}/nope/vb does not exist"),
    (["convert", "--to", "gguf", "{t}/model", "{t}/new"], "argument --to: invalid choice: 'gguf'"),
    (["train", "--lerning_rate", "1e-3"], "unknown option --lerning_rate (did you mean --learning_rate?)"),
    (["train", "--output_dir", "{t}/run", "--data_path", "{t}/missing.json"], "--data_path {t}/missing.json does"),
    (["train", "--output_dir", "{t}/run", "--stage", "al1gn"], "argument --stage: invalid choice: 'al1gn'"),
    (["train", "--output_dir", "{t}/run", "--connector", "mlp2"], "--connector: Unknown connector 'mlp2'"),
    (["train", "--output_dir", "{t}/run", "--model", "{t}/adapter"], "--model {t}/adapter has no config.json"),
    (["train", "--output_dir", "{t}/run", "--vision_model", "{t}/model"], "pass both --vision_model"),
    (["train", "--output_dir", "{t}/full"], "--output_dir {t}/full is not empty (keep.txt)"),
    (["train", "--output_dir", "{t}/run", "--stage", "full", "--lora_vision"], "stage='full' with lora_vision"),
]


@pytest.mark.parametrize(("argv", "message"), MISTAKES, ids=[" ".join(argv[:2]) for argv, _ in MISTAKES])
def test_a_mistake_is_one_line_and_exit_code_2_before_any_model_loads(argv, message, folders, no_model_loads, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([part.format(t=folders) for part in argv])
    captured = capsys.readouterr()
    assert exit_.value.code == 2
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert message.format(t=folders) in captured.err


def test_train_writes_into_a_used_output_dir_only_when_told(folders):
    for told in (["--overwrite_output_dir"], ["--resume_from_checkpoint", str(folders / "full" / "checkpoint-2")]):
        check(*parse_arguments(["--output_dir", str(folders / "full"), *told]))  # no UsageError


def test_a_mistake_from_the_console_script_prints_no_traceback(folders):
    run = subprocess.run(
        [str(Path(sys.executable).with_name("visionbridge")), "chat", str(folders / "model"), "--image", "x.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == "visionbridge chat: --image x.png does not exist"


def test_images_given_on_the_command_line_are_read_as_training_data_reads_them(tmp_path):
    """Transparent areas become white and 16-bit images are scaled, as in training and model.chat (a plain RGB
    conversion would give black and clipped pixels)."""
    import numpy as np
    from PIL import Image

    from visionbridge.cli.usage import local_image

    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert local_image(str(tmp_path / "clear.png"), "--image").getpixel((0, 0)) == (255, 255, 255)
    assert local_image(str(tmp_path / "deep.png"), "--image").getpixel((0, 0)) == (255, 255, 255)
