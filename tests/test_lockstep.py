"""The benchmark's two sides take turns in their own processes: the order flips every turn, warm-up replies are
dropped, a side's stray prints do not break its replies, and a side that dies, while loading too, is reported with
its stderr."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import lockstep  # noqa: E402

# A side that prints to stdout while loading and answering, answers each request with the clock reading when it
# ran, and dies on "exit"; or dies while loading.
SIDE = """
import sys, time
sys.path.insert(0, {examples!r})
import lockstep

def handle(request):
    print("a library writing to stdout")
    if request["do"] == "exit":
        print("the side's own error", file=sys.stderr)
        sys.exit(3)
    return {{"clock": time.monotonic_ns()}}

def start():
    print("loading", flush=True)
    if {fails_to_load}:
        raise OSError("no weights in this folder")
    return handle

lockstep.serve(start)
"""


def _side(name: str, tmp_path: Path, fails_to_load: bool = False) -> lockstep.Side:
    script = SIDE.format(examples=str(Path(lockstep.__file__).parent), fails_to_load=fails_to_load)
    return lockstep.Side(name, [sys.executable, "-c", script], tmp_path / f"{name}.log")


def test_sides_take_turns_in_flipping_order_and_warmup_is_dropped(tmp_path):
    with lockstep.running([_side("first", tmp_path), _side("second", tmp_path)]) as sides:
        replies = lockstep.alternate(sides, {"do": "time"}, warmup=1, turns=4)
    assert [len(replies["first"]), len(replies["second"])] == [4, 4]
    # Timed turns 1..4 follow one warm-up turn (turn 0, first side first): odd turns start with the second side.
    for turn, (first, second) in enumerate(zip(replies["first"], replies["second"], strict=True), start=1):
        assert (first["clock"] < second["clock"]) == (turn % 2 == 0)
    assert len({reply["clock"] for side in replies.values() for reply in side}) == 8  # eight separate units


def test_a_side_that_dies_is_reported_with_its_stderr(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)The dying side stopped \(exit code 3\).*the side's own error"):
        with lockstep.running([_side("dying", tmp_path)]) as (side,):
            side.ask({"do": "exit"})


def test_a_side_that_dies_while_loading_is_reported_and_the_other_side_is_ended(tmp_path):
    sides = [_side("healthy", tmp_path), _side("broken", tmp_path, fails_to_load=True)]
    with pytest.raises(RuntimeError, match=r"(?s)The broken side stopped \(exit code 1\).*no weights in this folder"):
        with lockstep.running(sides):
            lockstep.alternate(sides, {"do": "time"}, warmup=0, turns=1)
    assert all(side.process.poll() is not None for side in sides)
