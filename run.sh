#!/usr/bin/env bash
# bash run.sh demo   - the main job on the embedded default: fine-tune built-in tiny components on handwritten
#                      digits (LoRA + connector), then answer questions about held-out digits
# bash run.sh test   - lint, then the test suite on transformers 5.x and on 4.57.x
# Needs only python3 (3.10+): each transformers line gets its own virtual environment here.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

venv() {  # venv DIR TRANSFORMERS_SPEC
    local dir=$1 spec=$2
    if [ ! -f "$dir/.ready" ] || [ pyproject.toml -nt "$dir/.ready" ]; then
        "$PYTHON" -m venv "$dir"
        # The CPU build of torch first, so that nothing pulls a CUDA build.
        "$dir/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
        "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" "$spec"
        touch "$dir/.ready"
    fi
}

case "${1:-}" in
    demo)
        venv .venv "transformers>=5,<6"
        # LoRA on the LLM at 1e-3, the connector at its own 3e-3; every TrainingArguments flag can be added.
        .venv/bin/visionbridge train --output_dir outputs/digits --max_steps 2000 --per_device_train_batch_size 16 \
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
