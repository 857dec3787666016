"""Saves are whole: a save killed at any moment, or racing another, leaves the old folder or the new one; staging
folders of dead saves are removed by the next save there; saved folders follow the umask."""

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from cpu_args import cpu_args
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

import visionbridge
from visionbridge.modeling import atomic_save
from visionbridge.modeling.atomic_save import staged_folder, staging_folder
from visionbridge.trainer import VisionBridgeTrainer

SCRIPT = Path(__file__).with_name("save_kills.py")
KINDS = ["model", "processor", "adapter", "checkpoint", "complete"]


@pytest.fixture(scope="module")
def kills(components, tmp_path_factory) -> tuple[dict, Path]:
    """The report of save_kills.py (run once for this file), and its work folder."""
    workdir = tmp_path_factory.mktemp("kills")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), *components(), str(workdir), "17"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1]), workdir


@pytest.mark.parametrize("kind", KINDS)
def test_a_save_killed_at_random_moments_leaves_the_old_or_the_new_folder(kills, kind):
    rounds = kills[0][kind]["rounds"]
    killed = [result for result in rounds if result["killed"]]
    assert len(killed) >= 20
    assert [result["state"] for result in rounds if result["state"] not in ("old", "new")] == []
    # Killed saves leave staging folders behind; the next whole save removes them and is itself whole.
    assert any(result["left_by_kill"] for result in killed)
    whole = [result for result in rounds if "whole_save_is_new" in result]
    assert whole and all(result["whole_save_is_new"] for result in whole)
    assert [result["left_after_whole_save"] for result in whole if result["left_after_whole_save"]] == []


def _load(kind: str, folder: Path, components):
    """What a reader of `folder` gets: the model's connector weights, the processor's chat template, the adapter's
    and checkpoint's connector weights (and the checkpoint's optimizer and scheduler states)."""
    if kind == "processor":
        return AutoProcessor.from_pretrained(folder).chat_template
    if kind in ("model", "complete"):
        AutoProcessor.from_pretrained(folder)
        return AutoModelForImageTextToText.from_pretrained(folder).connector[0].weight
    if kind == "checkpoint":
        for name in ("optimizer.pt", "scheduler.pt"):
            torch.load(folder / name, weights_only=True)
    base = visionbridge.from_components(*components())[0]
    return PeftModel.from_pretrained(base, folder).base_model.model.connector.modules_to_save.default[0].weight


@pytest.mark.parametrize("kind", KINDS)
def test_the_old_and_the_new_save_each_load(kills, components, kind):
    # The destination after each kill had the bytes of one of these two whole saves.
    versions = [_load(kind, kills[1] / "whole" / kind / version, components) for version in ("A", "B")]
    assert not (versions[0] == versions[1] if isinstance(versions[0], str) else torch.equal(*versions))


@pytest.mark.parametrize("race", ["race_same_save", "race_model_and_processor"])
def test_saves_racing_into_one_folder_never_mix(kills, race):
    # Two model saves at once leave one of them whole; a model and a processor saved at once leave both.
    results = kills[0][race]
    assert len(results) >= 8
    assert all(result["codes"] == [0, 0] for result in results)
    assert [result for result in results if not result["expected"] or result["left"]] == []


def _modes(folder: Path) -> set[tuple[str, str]]:
    return {
        ("folder" if path.is_dir() else "file", stat.filemode(path.stat().st_mode))
        for path in [folder, *folder.rglob("*")]
    }


@pytest.mark.parametrize(
    ("umask", "folder", "file"), [(0o022, "drwxr-xr-x", "-rw-r--r--"), (0o027, "drwxr-x---", "-rw-r-----")]
)
def test_saved_folders_follow_the_umask(make_model, digit_samples, tmp_path, umask, folder, file):
    model, processor = make_model()
    previous = os.umask(umask)
    try:
        model.save_pretrained(tmp_path / "model")
        processor.save_pretrained(tmp_path / "model")
        args = cpu_args(
            tmp_path / "run", per_device_train_batch_size=4, max_steps=1, save_strategy="steps", save_steps=1
        )
        trainer = VisionBridgeTrainer(
            model=model, args=args, train_dataset=digit_samples[:4], processing_class=processor
        )
        trainer.train()
        trainer.save_model(str(tmp_path / "adapter"))
    finally:
        os.umask(previous)
    for saved in (tmp_path / "model", tmp_path / "adapter", tmp_path / "run" / "checkpoint-1"):
        assert _modes(saved) == {("folder", folder), ("file", file)}, saved


def test_a_folder_saved_again_keeps_its_permissions(make_model, tmp_path):
    model, _ = make_model()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model").chmod(0o750)
    model.save_pretrained(tmp_path / "model")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750


def _dead_staging(destination: Path, token: str) -> Path:
    """What a save killed mid-way leaves: its staging folder, with a file in it, and an unlocked lock file."""
    staging = destination.parent / f".{destination.name}.{token}.partial"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    Path(f"{staging}.lock").touch()
    return staging


def test_the_next_save_removes_dead_staging_folders_but_not_a_running_saves(tmp_path):
    destination = tmp_path / "vlm"
    dead = _dead_staging(destination, "deadbeef")
    nested = _dead_staging(tmp_path / dead.name, "0badcafe")  # a model saved into a whole save's staging folder
    legacy = tmp_path / ".vlm.k3j4h5g6.partial"  # left by an earlier version, which made no lock
    legacy.mkdir()
    other = _dead_staging(tmp_path / "vlm.old", "deadbeef")  # another destination's: not this save's to remove
    with staging_folder(destination) as running:
        with staged_folder(destination) as staging:
            (staging / "config.json").write_text('{"new": 1}')
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
            [running.name, f"{running.name}.lock", other.name, f"{other.name}.lock", "vlm"]
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([other.name, f"{other.name}.lock", "vlm"])
    assert not nested.exists() and (destination / "config.json").read_text() == '{"new": 1}'


def _save(destination: Path, files: dict[str, str], stale: tuple[str, ...] = ()) -> None:
    with staged_folder(destination, stale=stale) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch):
    """Each publish path: the one-step exchange, and the two renames of systems without it."""
    if request.param == "two renames":
        monkeypatch.setattr(atomic_save, "_exchange", lambda first, second: False)
    return request.param


def test_a_save_over_a_folder_keeps_its_other_files_and_drops_stale_shards(tmp_path, swap):
    destination = tmp_path / "vlm"
    _save(destination, {"config.json": "1", "model-00001-of-00002.safetensors": "a", "tokenizer.json": "t"})
    (destination / "runs").mkdir()
    (destination / "runs" / "events").write_text("log")
    (destination / "latest").symlink_to("runs")
    _save(destination, {"config.json": "2", "model.safetensors": "b"}, stale=("model*.safetensors",))
    found = {str(path.relative_to(destination)): path for path in destination.rglob("*")}
    assert sorted(found) == ["config.json", "latest", "model.safetensors", "runs", "runs/events", "tokenizer.json"]
    assert found["config.json"].read_text() == "2" and found["tokenizer.json"].read_text() == "t"
    assert os.readlink(found["latest"]) == "runs" and found["runs/events"].read_text() == "log"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vlm"]


def test_a_swap_by_two_renames_cut_short_is_finished_by_the_next_save(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_save, "_exchange", lambda first, second: False)
    destination, aside = tmp_path / "vlm", tmp_path / ".vlm.being-replaced"
    _save(destination, {"config.json": "old", "tokenizer.json": "t"})
    destination.rename(aside)  # killed between the two renames: the old folder is aside, none in place
    _save(destination, {"config.json": "new"})
    assert (destination / "config.json").read_text() == "new" and (destination / "tokenizer.json").read_text() == "t"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vlm"]

    aside.mkdir()  # killed after the second rename: the old folder is still aside, the new one in place
    (aside / "config.json").write_text("old")
    _save(destination, {"config.json": "newer"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vlm"]
    assert (destination / "config.json").read_text() == "newer"


def test_a_save_follows_a_link_to_a_folder(tmp_path):
    _save(tmp_path / "v1", {"config.json": "1"})
    (tmp_path / "latest").symlink_to("v1")
    _save(tmp_path / "latest", {"config.json": "2"})
    assert (tmp_path / "latest").is_symlink() and (tmp_path / "v1" / "config.json").read_text() == "2"


def test_a_save_into_a_file_is_refused_and_leaves_it(tmp_path):
    (tmp_path / "vlm").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"vlm: it exists and is not a folder"):
        _save(tmp_path / "vlm", {"config.json": "1"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vlm"]


def test_a_save_that_publishes_after_another_keeps_the_others_files(tmp_path):
    destination = tmp_path / "vlm"
    _save(destination, {"config.json": "old", "model.safetensors": "old"})
    with staged_folder(destination) as processor_save:
        (processor_save / "processor_config.json").write_text("new")
        _save(destination, {"config.json": "new", "model.safetensors": "new"})  # a model save, done meanwhile
    assert {path.name: path.read_text() for path in destination.iterdir()} == {
        "config.json": "new",
        "model.safetensors": "new",
        "processor_config.json": "new",
    }


def test_a_save_waits_while_another_publishes_into_the_same_folder(tmp_path):
    destination = tmp_path / "vlm"
    _save(destination, {"config.json": "1"})
    with atomic_save._parent_locked(destination):  # what a save holds while it publishes
        second = threading.Thread(target=_save, args=(destination, {"config.json": "2"}))
        second.start()
        second.join(1.0)
        assert second.is_alive() and (destination / "config.json").read_text() == "1"
    second.join(30)
    assert (destination / "config.json").read_text() == "2"


def test_a_model_and_an_adapter_saved_in_turn_into_one_folder_leave_only_the_last(make_model, digit_samples, tmp_path):
    """A full model saved where an adapter was (or the reverse) drops the other's weights and config, which
    from_pretrained would otherwise load together (an old adapter applied over new full weights)."""
    model, processor = make_model()
    folder = tmp_path / "out"
    trainer = VisionBridgeTrainer(
        model=model,
        args=cpu_args(tmp_path / "run", per_device_train_batch_size=4, max_steps=1),
        train_dataset=digit_samples[:4],
        processing_class=processor,
    )
    trainer.train()
    trainer.save_model(str(folder))
    trainer.save_model(str(tmp_path / "adapter"))
    assert (folder / "adapter_config.json").is_file()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(folder)
    assert not list(folder.glob("adapter_*"))
    assert not hasattr(AutoModelForImageTextToText.from_pretrained(folder), "peft_config")
    trainer.model = PeftModel.from_pretrained(merged, tmp_path / "adapter")
    trainer.save_model(str(folder))
    assert not (folder / "config.json").exists() and not list(folder.glob("model*.safetensors"))
    assert (folder / "adapter_model.safetensors").is_file()
