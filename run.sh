#!/usr/bin/env bash
# bash run.sh demo   - the main job on the embedded default: fine-tune built-in tiny components on handwritten
#                      digits (LoRA + connector), then answer questions about held-out digits
# bash run.sh test   - lint, then the test suite on transformers 5.x and on 4.57.x
# Needs only python3 (3.10+): each transformers line gets its own virtual environment here, with torch first:
# the CUDA build from PyPI where nvidia-smi finds a GPU, else the CPU build from the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
CPU_INDEX=${VISIONBRIDGE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}  # or a mirror of it

say() { echo "[run.sh] $*"; }

pip_install() {  # pip_install VENV_DIR ARGS...: pip's own lines as they come, less the list of what is already there
    local dir=$1 line
    shift
    "$dir/bin/python" -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 |
        while IFS= read -r line; do
            case "$line" in
                "Requirement already satisfied"* | "Looking in "*) ;;
                *) printf '%s\n' "$line" ;;
            esac
        done
}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

cpu_index_reachable() {  # cpu_index_reachable VENV_DIR: an answer within 5 s, whatever the network does
    "$1/bin/python" - "$CPU_INDEX/torch/" <<'PY'
import sys, threading, urllib.request

done, reached = threading.Event(), []

def probe():
    try:
        reached.append(urllib.request.urlopen(sys.argv[1], timeout=5).status == 200)
    except Exception:
        pass
    done.set()

threading.Thread(target=probe, daemon=True).start()
done.wait(5)
sys.exit(0 if reached == [True] else 1)
PY
}

install_torch() {  # install_torch VENV_DIR
    local dir=$1
    if has_gpu; then
        say "nvidia-smi finds a GPU: installing torch $TORCH_VERSION from PyPI (the CUDA build, about 5 GB)"
        pip_install "$dir" "torch==$TORCH_VERSION"
    elif cpu_index_reachable "$dir"; then
        say "no GPU: installing torch $TORCH_VERSION, the CPU build, from $CPU_INDEX"
        pip_install "$dir" --index-url "$CPU_INDEX" "torch==$TORCH_VERSION"
    elif "$dir/bin/python" -m pip install -q --dry-run --no-deps "torch==$TORCH_VERSION+cpu" >/dev/null 2>&1; then
        say "no GPU, and $CPU_INDEX cannot be reached: installing the CPU wheel pip finds here, torch $TORCH_VERSION+cpu"
        pip_install "$dir" "torch==$TORCH_VERSION+cpu"
    else
        say "no GPU, and $CPU_INDEX cannot be reached: installing torch $TORCH_VERSION from PyPI instead (on Linux the CUDA build, about 5 GB)"
        pip_install "$dir" "torch==$TORCH_VERSION"
    fi
}

venv() {  # venv DIR TRANSFORMERS_SPEC
    local dir=$1 spec=$2
    if [ ! -f "$dir/.ready" ] || [ pyproject.toml -nt "$dir/.ready" ]; then
        say "creating $dir ($spec)"
        "$PYTHON" -m venv "$dir"
        install_torch "$dir"
        say "installing visionbridge with its test and demo extras, and $spec"
        pip_install "$dir" -e ".[test]" "$spec"
        say "$dir is ready: $("$dir/bin/python" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
        touch "$dir/.ready"
    fi
}

case "${1:-}" in
    demo)
        venv .venv "transformers>=5,<6"
        # LoRA on the LLM at 1e-3, the connector at its own 3e-3; every TrainingArguments flag can be added.
        .venv/bin/visionbridge train --output_dir outputs/digits --overwrite_output_dir \
            --max_steps 2000 --per_device_train_batch_size 16 \
            --learning_rate 1e-3 --connector_lr 3e-3 --lr_scheduler_type cosine --warmup_ratio 0.03 \
            --logging_steps 200 --save_strategy no --report_to none --use_cpu
        ;;
    test)
        venv .venv "transformers>=5,<6"
        venv .venv-tf4 "transformers>=4.57,<4.58"
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        VISIONBRIDGE_OTHER_PYTHON="$PWD/.venv-tf4/bin/python" .venv/bin/python -m pytest tests -q
        VISIONBRIDGE_OTHER_PYTHON="$PWD/.venv/bin/python" .venv-tf4/bin/python -m pytest tests -q
        ;;
    *)
        echo "usage: bash run.sh demo|test" >&2
        exit 2
        ;;
esac
