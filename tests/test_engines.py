"""DeepSpeed ZeRO-2 and ZeRO-3 and FSDP2 on two CPU processes (gloo), one of them never seeing an image, against one
process; `visionbridge train` launched on two processes under DDP, ZeRO-3 and FSDP2; FSDP's default auto-wrap. The
runs go one at a time; engine_checks.py says what each must show."""

import json
import os
import shlex
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from cpu_args import cpu_args
from engine_checks import ENGINES, EXAMPLES, TESTS, check_command_run, check_engine_run, command_flags, launch, run
from gpu_engines import NO_GPU
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from visionbridge.cli.train import parse_arguments
from visionbridge.trainer.lora import prepare_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The folder of the engine runs, holding the one-process reference run (engine_train.py)."""
    out = tmp_path_factory.mktemp("engines")
    run([sys.executable, str(TESTS / "engine_train.py"), str(out), "single"])
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_with_a_text_only_rank_matches_one_process(runs, engine):
    run(launch(engine, 2, "engine_train.py", str(runs), engine))
    check_engine_run(runs, engine)


@pytest.mark.parametrize("engine", ("ddp", "zero3", "fsdp2"))
def test_train_command_on_two_processes(tmp_path, engine):
    output = run(launch(engine, 2, "-m", "visionbridge", "train", *command_flags(tmp_path, engine)))
    check_command_run(tmp_path / "out", output)


@pytest.mark.parametrize(("vision", "language"), [("clip", "llama"), ("siglip", "qwen2"), ("clip", "opt")])
def test_fsdp_default_wrap_policy_finds_the_blocks(make_model, tmp_path, vision, language):
    model, _ = make_model(vision, language)
    peft_model = prepare_model(model, cpu_args(tmp_path, stage="instruct"))  # accelerate is handed the PeftModel
    held = Counter(type(module).__name__ for module in model.modules())
    assert set(model._no_split_modules) <= set(held)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    policy = fsdp2_prepare_auto_wrap_policy(plugin, peft_model)
    wrapped = Counter(type(module).__name__ for module in peft_model.modules() if policy(module))
    layers = {"clip": "CLIPEncoderLayer", "siglip": "SiglipEncoderLayer"}[vision]
    blocks = {"llama": "LlamaDecoderLayer", "qwen2": "Qwen2DecoderLayer", "opt": "OPTDecoderLayer"}[language]
    assert wrapped[layers] == model.config.vision_config.num_hidden_layers
    assert wrapped[blocks] == model.config.text_config.num_hidden_layers
    assert wrapped == {name: held[name] for name in model._no_split_modules}
    # FSDP1's policy reads the same names, and refuses one the model does not hold.
    FullyShardedDataParallelPlugin(fsdp_version=1, auto_wrap_policy="transformer_based_wrap").set_auto_wrap_policy(
        peft_model
    )


def test_the_gpu_script_says_it_needs_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(TESTS / "gpu_engines.py")], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stderr.strip()) == (1, NO_GPU)


def test_the_readme_commands_and_the_shipped_configs(tmp_path):
    # Parsing them makes DeepSpeed's config the process's (undone after each); what transformers 4.57 writes into
    # os.environ is removed after the test (conftest.py).
    readme = (TESTS.parent / "README.md").read_text()
    section = readme[readme.index("## Multi-GPU") : readme.index("## Configuration")]
    start = section.index("```bash\n") + len("```bash\n")
    named = set()
    for line in section[start : section.index("```", start)].splitlines():
        argv = shlex.split(line.replace(" N ", " 2 "))
        assert argv[0] in ("torchrun", "accelerate") and argv[argv.index("-m") + 1 : argv.index("-m") + 3] == [
            "visionbridge",
            "train",
        ]
        named |= {arg for arg in argv if arg.startswith("examples/")}
        flags = argv[argv.index("train") + 1 :]
        flags[flags.index("--output_dir") + 1] = str(tmp_path)
        parse_arguments([*flags, "--use_cpu"])  # bf16 needs a GPU unless on the CPU
        unset_hf_deepspeed_config()
    assert named == {"examples/ds_zero2.json", "examples/ds_zero3.json", "examples/fsdp2.yaml"}

    for stage in (2, 3):
        config = json.loads((EXAMPLES / f"ds_zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage and not {"optimizer", "scheduler"} & set(config)
        assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
        assert config["bf16"] == config["fp16"] == {"enabled": "auto"}
    assert json.loads((EXAMPLES / "ds_zero3.json").read_text())["zero_optimization"][
        "stage3_gather_16bit_weights_on_model_save"
    ]
    fsdp = yaml.safe_load((EXAMPLES / "fsdp2.yaml").read_text())
    assert (fsdp["distributed_type"], fsdp["mixed_precision"]) == ("FSDP", "bf16")
    assert (
        fsdp["fsdp_config"]
        | {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": False,
        }
        == fsdp["fsdp_config"]
    )
