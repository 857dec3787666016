"""Two benchmark sides, each in its own process, taking turns one timed unit at a time.

On a shared machine speed drifts by 10% and more within seconds, so sides timed one after the other are timed on
different machines. Here both processes are started side by side and the parent asks each in turn for one unit
(a training step, a generate call), the first side first on even turns and second on odd ones: a slow spell falls
on both, and each pair of adjacent units gives one ratio. Only one side computes at any moment.

A side is a command that ends in a call to `serve(start)`, where `start()` loads the side and returns the function
that answers each request, a dict, with a dict. `TrainerTurns` makes a Hugging Face Trainer's own loop such a side,
one optimizer step per request.
"""

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback


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


class _Stopped(Exception):
    """Ends the Trainer's loop before its next step: the side is closing."""


class _OneStepPerTurn(TrainerCallback):
    """Holds the Trainer before each optimizer step until it is let go (True) or stopped (False), and reports the
    step's seconds."""

    def __init__(self, go: queue.Queue, done: queue.Queue):
        self.go, self.done = go, done

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.go.get():
            raise _Stopped
        _synchronize()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()  # the step's queued GPU work is part of it
        self.done.put(time.perf_counter() - self.started)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class TrainerTurns:
    """`trainer.train()` run in a thread that waits before each optimizer step: `step()` lets one step run (forward,
    backward, gradient clipping, optimizer and scheduler, as the Trainer's loop does them) and returns its seconds and
    loss. The batch is fetched before the wait, so it is not timed; give the trainer more steps than will be asked
    for, so that it never reaches the end of training while another side is being timed."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.go, self.done, self.losses = trainer, queue.Queue(), queue.Queue(), []
        trainer.add_callback(_OneStepPerTurn(self.go, self.done))
        training_step = trainer.training_step

        def recorded(*args, **kwargs):
            loss = training_step(*args, **kwargs)
            self.losses.append(loss.item())
            return loss

        trainer.training_step = recorded
        self.thread = threading.Thread(target=self._train, daemon=True)  # started by the first step
        # The thread ends before the interpreter does: one frozen mid-wait can abort the process on exit.
        atexit.register(self.stop)

    def _train(self) -> None:
        try:
            self.trainer.train()
            raise RuntimeError(f"The trainer ended after its {self.trainer.state.global_step} steps.")
        except _Stopped:
            pass
        except BaseException as error:  # handed to the waiting step(), which raises it
            self.done.put(error)

    def stop(self) -> None:
        """End the trainer's thread at its next step's start."""
        if self.thread.is_alive():
            self.go.put(False)
            self.thread.join()

    def step(self) -> dict:
        if self.thread.ident is None:
            self.thread.start()
        self.go.put(True)
        seconds = self.done.get()
        if isinstance(seconds, BaseException):
            raise seconds
        return {"seconds": seconds, "loss": self.losses[-1]}
