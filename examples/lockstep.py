"""Two benchmark sides, each in its own process, taking turns one timed unit at a time.

On a shared machine speed drifts by 10% and more within seconds, so sides timed one after the other are timed on
different machines. Here both processes are started side by side and the parent asks each in turn for one unit
(a training step, a generate call), the first side first on even turns and second on odd ones: a slow spell falls
on both, and each pair of adjacent units gives one ratio. Only one side computes at any moment.

A side is a command that ends in a call to `serve(start)`, where `start()` loads the side and returns the function
that answers each request, a dict, with a dict.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def serve(start: Callable[[], Callable[[dict], dict]]) -> None:
    """Load the side with `start()`, then answer each JSON request line on stdin with one JSON line of
    handle(request). Whatever else the process prints, while loading too (libraries, progress bars), goes to
    stderr, so it cannot break a reply."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    handle = start()
    for line in sys.stdin:
        replies.write(json.dumps(handle(json.loads(line))) + "\n")
        replies.flush()


class Side:
    """One side's process: `ask` sends a request and waits for its reply; stderr is kept in `log`."""

    def __init__(self, name: str, command: list[str], log: Path, environment: dict | None = None):
        self.name, self.log = name, log
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment
            )

    def ask(self, request: dict) -> dict:
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        except BrokenPipeError:  # it died before reading the request, while loading say
            reply = ""
        if not reply:
            self.process.wait()
            raise RuntimeError(
                f"The {self.name} side stopped (exit code {self.process.returncode}) on {request}:\n"
                f"{self.log.read_text()[-4000:]}"
            )
        return json.loads(reply)

    def close(self) -> None:
        self.process.stdin.close()
        if self.process.wait() != 0:
            raise RuntimeError(f"The {self.name} side failed on exit:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def running(sides: list[Side]) -> Iterator[list[Side]]:
    """The sides, each closed (its exit checked) when the block ends, and killed if the block raised."""
    try:
        yield sides
        for side in sides:
            side.close()
    finally:
        for side in sides:
            side.kill()


def alternate(sides: list[Side], request: dict, warmup: int, turns: int) -> dict[str, list[dict]]:
    """Ask every side for `request` warmup + turns times, taking turns, the order reversed on odd turns; returns
    each side's replies to the timed turns (warm-up replies dropped) by side name."""
    replies = {side.name: [] for side in sides}
    for turn in range(warmup + turns):
        for side in sides if turn % 2 == 0 else reversed(sides):
            reply = side.ask(request)
            if turn >= warmup:
                replies[side.name].append(reply)
    return replies
