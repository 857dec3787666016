"""The benchmark: speed and memory against transformers' Llava and TRL, and each connector's quality, in one run.

Each section is a module beside this file with `run(size, device) -> list[dict]`; every row holds section,
metric, ours, reference, ratio (ours / reference, as time or memory), goal, met and note. The rows are printed as a
markdown table and written as JSON.

    python examples/benchmark.py --size all --output benchmark.json
    python examples/benchmark.py --size tiny --sections speed   # a quick look
"""

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the section modules sit beside this file

SECTIONS = ["bench_speed", "bench_packing", "bench_quality", "bench_vocab"]
CUDA_SECTIONS = ["bench_mfu"]
COLUMNS = ("section", "metric", "ours", "reference", "ratio", "goal", "met", "note")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[column]) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name()}"
    return f"{where}; torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="all", choices=["tiny", "100m", "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sections", default=None, help="comma-separated section names (speed, quality, ...)")
    parser.add_argument("--output", type=Path, default=Path("benchmark.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device.")

    modules = SECTIONS + (CUDA_SECTIONS if args.device == "cuda" else [])
    if args.sections:
        wanted = {f"bench_{name.strip().removeprefix('bench_')}" for name in args.sections.split(",")}
        unknown = wanted - set(modules)
        if unknown:
            parser.error(f"--sections: unknown {sorted(unknown)}; available: {', '.join(modules)}")
        modules = [name for name in modules if name in wanted]
    rows, started = [], time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in modules:
        rows += importlib.import_module(name).run(args.size, args.device)
    result = {
        "date": started,
        "machine": machine(),
        "command": "python examples/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sections": modules,
        "rows": rows,
    }
    args.output.write_text(json.dumps(result, indent=1))
    print(f"{result['date']}; {result['machine']}\n`{result['command']}`\n")
    print(markdown_table(rows))
    return result


if __name__ == "__main__":
    main()
