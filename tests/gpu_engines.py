"""The checks of test_engines.py on GPUs in bf16: ZeRO-2, ZeRO-3 and FSDP2 on the tiny model, each against one process
(engine_checks.check_engine_run), then `visionbridge train` under DDP, ZeRO-3 and FSDP2 (check_command_run). Two
processes on a machine with two GPUs or more (one of them then trains on text-only batches only), one process on a
machine with one. Needs the test extra (deepspeed). From the repository root, in a few minutes:

    python tests/gpu_engines.py [OUT]    # OUT: where the runs write (default: a new temporary folder)

Prints a line per run and stops at the first check that fails, with what differed.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

NO_GPU = "gpu_engines.py runs on CUDA GPUs, and torch sees none here; tests/test_engines.py runs its checks on CPU."


def main(out: str | None = None) -> None:
    if not torch.cuda.is_available():
        sys.exit(NO_GPU)
    # Loaded once a GPU is found: the checks import transformers, peft and visionbridge.
    from engine_checks import BF16, ENGINES, TESTS, check_command_run, check_engine_run, command_flags, launch, run

    processes = min(torch.cuda.device_count(), 2)
    out = Path(out or tempfile.mkdtemp(prefix="gpu-engines-"))
    runs = out / "engines"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"{processes} process(es) on {torch.cuda.get_device_name(0)}, bf16; runs in {out}")

    def timed(name: str, command: list[str]) -> str:
        start = time.monotonic()
        output = run(command)
        print(f"{name:<28} ran in {time.monotonic() - start:5.1f} s", flush=True)
        return output

    timed("one process", [sys.executable, str(TESTS / "engine_train.py"), str(runs), "single", "cuda"])
    for engine in ENGINES:
        timed(engine, launch(engine, processes, "engine_train.py", str(runs), engine, "cuda", cuda=True))
        check_engine_run(runs, engine, BF16)
        print(f"{engine:<28} matches one process")
    for engine in ("ddp", "zero3", "fsdp2"):
        folder = out / f"command-{engine}"
        flags = command_flags(folder, engine, cuda=True)
        command = launch(engine, processes, "-m", "visionbridge", "train", *flags, cuda=True)
        output = timed(f"visionbridge train, {engine}", command)
        check_command_run(folder / "out", output)
        print(f"visionbridge train, {engine:<9} complete")
    print("all checks passed")


if __name__ == "__main__":
    main(*sys.argv[1:])
