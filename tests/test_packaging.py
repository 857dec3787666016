"""A normal (non-editable) install maps the root folders to visionbridge.<folder> and ships the card template."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_normal_install_imports_every_folder(tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import visionbridge, visionbridge.configuration, visionbridge.modeling, visionbridge.processing, "
        "visionbridge.trainer, visionbridge.trainer.model_card as card; "
        "print(visionbridge.__file__); assert card.TEMPLATE.is_file(); "
        "assert visionbridge.VisionBridgeForConditionalGeneration and visionbridge.from_components"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(target / "visionbridge" / "__init__.py")
