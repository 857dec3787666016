#!/usr/bin/env bash
# bash run.sh demo   - build a tiny VisionBridge model from built-in components and ask it about a photo
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
        .venv/bin/python examples/demo.py
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
