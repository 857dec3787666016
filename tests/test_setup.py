"""Set-up as a newcomer meets it: what `bash run.sh demo` installs on which machine (run here with a fake Python and
a fake nvidia-smi, so that nothing is installed), the dependencies pyproject.toml asks for, and a core install
(no extras) that runs inference and names the extra to install for what needs one."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import visionbridge

ROOT = Path(visionbridge.__file__).resolve().parent
README = (ROOT / "README.md").read_text()
RUN_SH = (ROOT / "run.sh").read_text()
TORCH_VERSION = re.search(r"^TORCH_VERSION=(\S+)$", RUN_SH, re.MULTILINE).group(1)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# A stand-in for python3 and the virtual environment's python: it logs each call and answers as FAKE_* say.
FAKE_PYTHON = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    echo "python $*" >> "$FAKE_LOG"
    if [ "$1 $2" = "-m venv" ]; then
        mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
        printf '#!/usr/bin/env bash\\necho "visionbridge $*" >> "$FAKE_LOG"\\n' > "$3/bin/visionbridge"
        chmod +x "$3/bin/visionbridge"
    elif [ "$1" = "-" ]; then  # the CPU index probe
        if [ "$FAKE_CPU_INDEX" = real ]; then exec "$REAL_PYTHON" "$@"; fi
        cat > /dev/null
        [ "$FAKE_CPU_INDEX" = reachable ]
    elif [ "$1 $2" = "-m pip" ]; then
        case "$*" in *--dry-run*) [ "$FAKE_LOCAL_CPU_WHEEL" = yes ]; exit;; esac
        echo "Requirement already satisfied: nothing"
        echo "Collecting something"
    elif [ "$1" = "-c" ]; then
        echo "torch $FAKE_TORCH, transformers 5"
    fi
    """
)


def run_setup(tmp_path: Path, gpu: bool, cpu_index: str, local_cpu_wheel: bool = False, env: dict | None = None):
    """`bash run.sh demo` in a copy of run.sh, with fakes: (its output, the pip installs it ran, the commands)."""
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(ROOT / "run.sh", work)
    shutil.copy(ROOT / "pyproject.toml", work)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "nvidia-smi").write_text(f"#!/usr/bin/env bash\nexit {0 if gpu else 1}\n")  # -L fails: no GPU
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "calls.log"
    run = subprocess.run(
        ["bash", str(work / "run.sh"), "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "FAKE_LOG": str(log),
            "FAKE_CPU_INDEX": cpu_index,
            "FAKE_LOCAL_CPU_WHEEL": "yes" if local_cpu_wheel else "no",
            "FAKE_TORCH": TORCH_VERSION,
            "REAL_PYTHON": sys.executable,
            **(env or {}),
        },
    )
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    installs = [
        call.split(" install ", 1)[1] for call in calls if " -m pip install " in call and "--dry-run" not in call
    ]
    return run.stdout, installs, calls


def test_with_a_gpu_run_sh_installs_pypis_cuda_build(tmp_path):
    output, installs, _ = run_setup(tmp_path, gpu=True, cpu_index="reachable")
    assert installs[0].endswith(f" torch=={TORCH_VERSION}") and "--index-url" not in installs[0]
    assert "nvidia-smi finds a GPU" in output and "CUDA build" in output


def test_without_a_gpu_run_sh_installs_the_cpu_build_from_the_cpu_index(tmp_path):
    output, installs, calls = run_setup(tmp_path, gpu=False, cpu_index="reachable")
    assert installs[0].endswith(f"--index-url {CPU_INDEX} torch=={TORCH_VERSION}")
    assert f"the CPU build, from {CPU_INDEX}" in output
    # then visionbridge with the extras the suite and the demo need, then the demo itself
    assert installs[1].split()[-3:] == ["-e", ".[test]", "transformers>=5,<6"]
    assert calls[-1].startswith("visionbridge train --output_dir outputs/digits --overwrite_output_dir")
    assert "Requirement already satisfied" not in output and "Collecting something" in output  # pip says what


def test_without_the_cpu_index_run_sh_takes_a_local_cpu_wheel(tmp_path):
    output, installs, _ = run_setup(tmp_path, gpu=False, cpu_index="unreachable", local_cpu_wheel=True)
    assert installs[0].endswith(f" torch=={TORCH_VERSION}+cpu") and "--index-url" not in installs[0]
    lines = [line for line in output.splitlines() if "cannot be reached" in line]
    assert len(lines) == 1 and f"the CPU wheel pip finds here, torch {TORCH_VERSION}+cpu" in lines[0]


def test_without_the_cpu_index_or_a_local_wheel_run_sh_says_it_installs_pypis_build(tmp_path):
    output, installs, _ = run_setup(tmp_path, gpu=False, cpu_index="unreachable")
    assert installs[0].endswith(f" torch=={TORCH_VERSION}") and "--index-url" not in installs[0]
    lines = [line for line in output.splitlines() if "cannot be reached" in line]
    assert len(lines) == 1 and "from PyPI instead (on Linux the CUDA build, about 5 GB)" in lines[0]


def test_an_index_that_never_answers_is_given_up_within_seconds(tmp_path):
    """The real probe against a local server that accepts the connection and never replies."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    index = f"http://127.0.0.1:{silent.getsockname()[1]}/whl/cpu"
    try:
        start = time.perf_counter()
        output, installs, _ = run_setup(
            tmp_path, gpu=False, cpu_index="real", env={"VISIONBRIDGE_TORCH_CPU_INDEX": index}
        )
        elapsed = time.perf_counter() - start
    finally:
        silent.close()
    assert f"{index} cannot be reached" in output and "--index-url" not in installs[0]
    assert elapsed < 15, f"run.sh waited {elapsed:.1f} s for the CPU index"


def test_the_readme_says_what_run_sh_installs():
    two_commands = README[README.index("## Two commands") : README.index("## The `visionbridge` command")]
    assert f"torch {TORCH_VERSION}" in two_commands and CPU_INDEX in two_commands
    for case in ("nvidia-smi", "CUDA build", "cannot be reached", "local CPU wheel"):
        assert case in two_commands, case
    assert "source .venv/bin/activate" in two_commands  # the follow-up commands run in the demo's environment
    install = README[README.index("## Install") : README.index("## Build a model from two checkpoints")]
    assert f"--index-url {CPU_INDEX}" in install and '".[test]"' in install


def _toml_list(text: str, key: str) -> list[str]:
    """The strings of the list `key = [...]` in pyproject.toml (tomllib is not in Python 3.10)."""
    block = re.search(rf"^{re.escape(key)} = \[(.*?)\]\s*(#.*)?$", text, flags=re.MULTILINE | re.DOTALL).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_pyproject_leaves_torch_unpinned_and_optional_parts_in_extras():
    text = (ROOT / "pyproject.toml").read_text()
    requirements = {re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0]: line for line in _toml_list(text, "dependencies")}
    assert "torch" in requirements and "<" not in requirements["torch"]  # GPU users keep the torch they have
    assert not {"datasets", "scikit-learn", "trl", "deepspeed"} & set(requirements)  # inference and training: none
    assert any(line.startswith("scikit-learn") for line in _toml_list(text, "demo"))
    assert any(line.startswith("datasets") for line in _toml_list(text, "datasets"))
    assert any(line.startswith("trl") for line in _toml_list(text, "trl"))
    assert any(line.startswith("deepspeed") for line in _toml_list(text, "deepspeed"))
    assert "visionbridge[demo,datasets,trl,deepspeed]" in _toml_list(text, "test")  # run.sh's install: the whole suite


def _core_site(tmp_path: Path) -> Path:
    """A site folder with every installed package but the extras' (scikit-learn, datasets, trl, deepspeed)."""
    site = tmp_path / "site"
    site.mkdir()
    extras = {"sklearn", "scikit_learn", "datasets", "trl", "deepspeed", "visionbridge"}
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if re.split(r"[-.]", entry.name)[0].lower() not in extras and not entry.name.startswith("__editable__"):
            (site / entry.name).symlink_to(entry)
    (site / "visionbridge").symlink_to(ROOT)
    return site


CORE_CHECK = """
import importlib.util, json, sys
from pathlib import Path

assert not any(importlib.util.find_spec(extra) for extra in ("sklearn", "datasets", "trl", "deepspeed"))
import torch
from PIL import Image

import visionbridge
from visionbridge.modeling.tiny_components import build_tiny_components
from visionbridge.trainer.digits import write_digits_data

work = Path(sys.argv[1])
model, processor = visionbridge.from_components(*build_tiny_components(work / "components"))
inputs = processor(images=[Image.new("RGB", (40, 30), "gray")], text=["<image> What is this?"])
output = model.generate(**inputs, max_new_tokens=2)
record = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
(work / "data.json").write_text(json.dumps([record]))
results = {"generated": output.shape[1] - inputs["input_ids"].shape[1]}
results["json"] = len(visionbridge.load_training_data(work / "data.json"))
(work / "table").mkdir()
(work / "table" / "state.json").write_text("{}")
needs_extras = {
    "datasets": lambda: visionbridge.load_training_data(work / "table"),
    "digits": lambda: write_digits_data(work / "digits"),
}
for name, call in needs_extras.items():
    try:
        call()
    except ImportError as error:
        results[name] = str(error)
results["trainer"] = visionbridge.VisionBridgeTrainer.__name__
print(json.dumps(results))
"""


def test_a_core_install_runs_inference_and_names_the_extras(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(_core_site(tmp_path)), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-S", "-c", CORE_CHECK, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results["generated"] == 2 and results["json"] == 1 and results["trainer"] == "VisionBridgeTrainer"
    assert "pip install 'visionbridge[datasets]'" in results["datasets"]
    assert "pip install 'visionbridge[demo]'" in results["digits"]
    command = subprocess.run(
        [sys.executable, "-S", "-m", "visionbridge", "train", "--output_dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert command.returncode == 2 and command.stdout == ""
    assert command.stderr.strip().splitlines() == [
        "visionbridge train: the built-in digits task (no --data_path): The built-in digits task needs scikit-learn, "
        "which is not installed: pip install 'visionbridge[demo]'."
    ]
    deepspeed = subprocess.run(
        [sys.executable, "-S", "-m", "visionbridge", "train", "--output_dir", str(tmp_path / "run")]
        + ["--deepspeed", str(ROOT / "examples" / "ds_zero3.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert (deepspeed.returncode, deepspeed.stdout) == (2, "")
    assert deepspeed.stderr.strip().splitlines() == [
        "visionbridge train: --deepspeed needs DeepSpeed, which is not installed: pip install 'visionbridge[deepspeed]'"
    ]
