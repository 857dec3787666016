"""DeepSpeed ZeRO-2 and ZeRO-3 and FSDP2 on two CPU processes (gloo), one of them never seeing an image, against one
process; and `visionbridge train` launched on two processes under DDP, ZeRO-3 and FSDP2. Runs one at a time."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from cpu_args import cpu_args
from ddp_mixed_train import mixed_samples
from digit_chats import digit_chats
from engine_train import STEPS
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from visionbridge.trainer import VisionBridgeTrainer

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples"
ENGINES = ("zero2", "zero3", "fsdp2")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(engine: str, *command: str) -> list[str]:
    """Two processes of `command` (a script of tests/ and its arguments, or -m and a module) under `engine`: torchrun
    for DDP and DeepSpeed, `accelerate launch` with examples/fsdp2.yaml for FSDP2."""
    if engine == "fsdp2":
        launcher = ["-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "fsdp2.yaml")]
        launcher += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port())]
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    return [sys.executable, *launcher, str(TESTS / "with_cpu_engines.py"), *command]


def run(command: list[str], cwd: Path = TESTS) -> str:
    # Each process on one thread: two of them share this machine's cores with everything else.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The folder of the engine runs, holding the one-process reference run (engine_train.py)."""
    out = tmp_path_factory.mktemp("engines")
    run([sys.executable, str(TESTS / "engine_train.py"), str(out), "single"])
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_with_a_text_only_rank_matches_one_process(runs, engine):
    run(launch(engine, "engine_train.py", str(runs), engine))
    reports = [json.loads((runs / f"{engine}-{rank}.json").read_text()) for rank in (0, 1)]
    single = json.loads((runs / "single-0.json").read_text())
    # The engine ran, and the situation under test happened: rank 1 never saw an image, rank 0 always did.
    expected = {"zero2": ("DEEPSPEED", 2, None), "zero3": ("DEEPSPEED", 3, None), "fsdp2": ("FSDP", None, 2)}[engine]
    for report in reports:
        assert (report["distributed_type"].rsplit(".")[-1], report["zero_stage"], report["fsdp_version"]) == expected
        assert report["world_size"] == 2
        assert report["sample_answers"] == 1  # generated during training by both processes together
    assert reports[0]["images_per_batch"] == [1] * 4 and reports[1]["images_per_batch"] == [0] * 4
    if engine == "zero3":  # every weight in shards outside its module's forward, the image start/end too
        assert reports[0]["whole_at_start"] == []
    base = AutoModelForImageTextToText.from_pretrained(runs / f"base-{engine}")
    if engine == "fsdp2":  # the default auto-wrap shards every block the model names on its own
        blocks = Counter(type(module).__name__ for module in base.modules())
        sharded = reports[0]["sharded_blocks"]
        assert {name: sharded.get(name) for name in base._no_split_modules} == {
            name: blocks[name] for name in base._no_split_modules
        }
        assert sharded["CLIPEncoderLayer"] == sharded["LlamaDecoderLayer"] == 2

    # The losses, the evaluation loss (whose batches hold no image on rank 1) and the learning rates of each group.
    assert reports[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert reports[0]["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)
    assert reports[0]["first_step_rates"] == single["first_step_rates"]
    rates = dict(single["first_step_rates"])
    assert rates["connector"] == pytest.approx(2 * rates["language_model"])
    # Resumed from the half-way checkpoint, the run goes on as the uninterrupted one did.
    assert reports[0]["resumed_losses"] == pytest.approx(reports[0]["losses"], rel=1e-6)

    # The saved adapter: every tensor whole, each moved as the one-process run moved it.
    initial, expected_adapter, adapter = (
        load_file(runs / f"adapter-{name}" / "adapter_model.safetensors")
        for name in ("single-initial", "single", engine)
    )
    assert adapter.keys() == expected_adapter.keys() and any("image_boundary" in name for name in adapter)
    for name, weight in expected_adapter.items():
        assert adapter[name].shape == weight.shape and adapter[name].numel() > 0, name
        update, engine_update = weight - initial[name], adapter[name] - initial[name]
        assert update.abs().max() > 0, f"{name} did not train"
        assert torch.allclose(engine_update, update, rtol=1e-4, atol=1e-6), (
            f"{name}: updates differ by up to {(engine_update - update).abs().max()}"
        )

    # Loaded back on its base in this process, the adapter gives the engine's evaluation loss.
    processor = AutoProcessor.from_pretrained(runs / f"base-{engine}")
    tuned = PeftModel.from_pretrained(base, runs / f"adapter-{engine}")
    args = cpu_args(runs / "reloaded", stage="instruct", per_device_eval_batch_size=2)
    trainer = VisionBridgeTrainer(model=tuned, args=args, processing_class=processor)
    assert trainer.evaluate(mixed_samples(STEPS))["eval_loss"] == pytest.approx(reports[0]["eval_loss"], rel=1e-5)


def _command_data(folder: Path) -> tuple[Path, Path]:
    """LLaVA files: 8 training records, every other one without an image, and 3 evaluation records, one without."""
    (folder / "images").mkdir(parents=True)
    records = []
    for index, sample in enumerate(digit_chats(11)):
        answer = {"from": "gpt", "value": sample["messages"][1]["content"]}
        if index % 2:
            records.append({"conversations": [{"from": "human", "value": "Say a digit."}, answer]})
            continue
        sample["images"][0].save(folder / "images" / f"{index}.png")
        question = {"from": "human", "value": "<image>\nWhat digit is this?"}
        records.append({"image": f"images/{index}.png", "conversations": [question, answer]})
    (folder / "train.json").write_text(json.dumps(records[:8]))
    (folder / "eval.json").write_text(json.dumps(records[8:]))
    return folder / "train.json", folder / "eval.json"


@pytest.mark.parametrize("engine", ("ddp", "zero3", "fsdp2"))
def test_train_command_on_two_processes(tmp_path, engine):
    train, evaluation = _command_data(tmp_path / "data")
    out = tmp_path / "out"
    flags = ["--output_dir", str(out), "--data_path", str(train), "--eval_data_path", str(evaluation)]
    flags += ["--max_steps", "2", "--per_device_train_batch_size", "2", "--mm_use_im_start_end"]
    flags += ["--eval_max_new_tokens", "2", "--use_cpu", "--ddp_backend", "gloo", "--report_to", "none"]
    if engine == "zero3":
        flags += ["--deepspeed", str(EXAMPLES / "ds_zero3.json")]
    output = run(launch(engine, "-m", "visionbridge", "train", *flags))
    assert output.count("report: ") == 1  # written by the first process
    assert json.loads((out / "eval_report.json").read_text())["count"] == 3

    # The built-in components and the base, written whole by one process: the base holds the components' weights.
    vision = AutoModel.from_pretrained(out / "components" / "tiny-clip")
    language = AutoModelForCausalLM.from_pretrained(out / "components" / "tiny-llama")
    base = AutoModelForImageTextToText.from_pretrained(out / "base")
    processor = AutoProcessor.from_pretrained(out / "base")
    for component, part in ((vision, base.vision_tower), (language, base.language_model)):
        held = part.state_dict()
        for name, weight in component.state_dict().items():
            assert torch.equal(held[name][: len(weight)], weight), name  # the LM's embeddings grew by 3 tokens
    assert [path.name for path in out.rglob(".*")] == []  # no staging folder left

    # The adapter applies to the base.
    assert all(weight.numel() for weight in load_file(out / "adapter_model.safetensors").values())
    tuned = PeftModel.from_pretrained(base, out)
    batch = processor(text=["Say a digit."], return_tensors="pt")
    assert torch.isfinite(tuned(**batch).logits).all()
