"""Run as a script: saves over an existing folder killed with SIGKILL at random moments, and saves into one folder
racing each other, for each kind of save; prints one JSON report for tests/test_atomic_save.py.

usage: save_kills.py VISION LANGUAGE WORKDIR SEED

WORKDIR/whole/KIND/A and .../B hold a whole save of each version of each kind of save.

The tiny model is built once; every save runs in a child forked from this process, saving one of two versions, A
and B, that differ in their weights (the processor: in its chat template). Each kind of save runs its rounds in its
own forked worker, all at once (most of a round is waiting). A round saves the version the destination does not
hold, kills the save after a random delay (drawn over the length of a whole save, counted from the moment the child
starts saving) and fingerprints the destination; every few rounds a whole save follows, after which no staging
folder may be left.
"""

import faulthandler
import hashlib
import json
import os
import random
import select
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ["TQDM_DISABLE"] = "1"  # no progress bars, and no tqdm monitor thread whose lock a fork could copy held

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

torch.set_num_threads(1)  # before anything runs: forked children never inherit a thread pool
# tqdm's default lock includes a process-shared semaphore: a child killed while holding it would block every later
# child. Each child gets its own copy of a thread lock instead.
tqdm.set_lock(threading.RLock())

from cpu_args import cpu_args  # noqa: E402
from digit_chats import digit_chats  # noqa: E402

import visionbridge  # noqa: E402
from visionbridge.cli.common import save_complete  # noqa: E402
from visionbridge.modeling import atomic_save  # noqa: E402
from visionbridge.trainer import VisionBridgeTrainer  # noqa: E402

KILLS = 20  # kills that land inside a save, per kind
MAX_ROUNDS = 80
WHOLE_SAVE_EVERY = 4  # rounds
RACES = 8
TEMPLATES = {"A": "{{ messages[0]['content'] }}", "B": "{{ messages[-1]['content'] }}"}


def fingerprint(folder: Path) -> str | None:
    """A digest of every path and file's bytes under `folder`; None when there is no folder."""
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def hidden(root: Path) -> list[str]:
    """Staging folders, their locks and folders moved aside: every hidden entry under `root`."""
    return sorted(str(path.relative_to(root)) for path in root.rglob(".*"))


def in_child(work, ready: int | None = None, watchdog: bool = True) -> int:
    """Fork; the child writes a byte to `ready` if given, runs `work` and exits.
    With `watchdog`, a child still running after a minute prints where it is and exits; a child that forks in turn
    must not have one (its watchdog thread would not exist in its own children, which would wait for it)."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    if watchdog:
        faulthandler.dump_traceback_later(60, exit=True)
    random.seed(0)  # Python reseeds `random` in a forked child; a checkpoint's saved RNG state must not differ
    try:
        if ready is not None:
            os.write(ready, b"s")
        work()
    except BaseException as error:  # noqa: BLE001 - the parent reads the exit status
        print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    os._exit(code)


def finish(pid: int, timeout: float = 120) -> int:
    """The child's exit code, or minus the signal that killed it; a child still running after `timeout` seconds is
    killed and reported."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"child {pid} was still running after {timeout} s")
        time.sleep(0.002)


def started(work) -> tuple[int, float]:
    """Fork `work` and wait until the child starts it: (pid, when it started)."""
    ready, signal_ready = os.pipe()
    pid = in_child(work, ready=signal_ready)
    os.read(ready, 1)
    os.close(ready), os.close(signal_ready)
    return pid, time.monotonic()


class Kind:
    """One kind of save into `destination` (under `root`, which holds nothing else): `save(version)`."""

    def __init__(self, root: Path, destination: Path, save):
        self.root, self.destination, self._save = root, destination, save

    def save(self, version: str) -> None:
        self._save(version, self.destination)

    def save_whole(self, version: str) -> float:
        """Save `version` in a child and wait for it; the seconds it took once started."""
        pid, start = started(lambda: self.save(version))
        code = finish(pid)
        if code != 0:
            raise RuntimeError(f"a whole save of {version} into {self.destination} failed with {code}")
        return time.monotonic() - start


def _bump(module: torch.nn.Module, version: str) -> None:
    """Version B: every trainable tensor (for a frozen model: every connector tensor) plus one."""
    if version == "B":
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if parameter.requires_grad or "connector" in name:
                    parameter.add_(1.0)


def kinds(vision: str, language: str, workdir: Path) -> dict[str, Kind]:
    """The kinds of save, each into its own folder; model and processor into folders that hold the other too."""
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(vision, language)
    model.eval()
    trainer = VisionBridgeTrainer(
        model=visionbridge.from_components(vision, language)[0],  # the trainer puts LoRA into the model it gets
        args=cpu_args(workdir / "checkpoint" / "run", per_device_train_batch_size=2, max_steps=1),
        train_dataset=digit_chats(2),
        processing_class=processor,
    )
    # An optimizer and a scheduler to checkpoint, without training: a backward pass starts threads, and this
    # process forks.
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.state.global_step = 1

    def save_model(version, destination):
        _bump(model, version)
        model.save_pretrained(destination)

    def save_processor(version, destination):
        processor.chat_template = TEMPLATES[version]
        processor.save_pretrained(destination)

    def save_adapter(version, destination):
        _bump(trainer.model, version)
        trainer.save_model(str(destination))

    def save_checkpoint(version, destination):
        _bump(trainer.model, version)
        trainer._save_checkpoint(trainer.model, trial=None)

    def save_folder(version, destination):
        _bump(model, version)
        save_complete(destination, model, processor)

    every = {
        "model": Kind(workdir / "model", workdir / "model" / "vlm", save_model),
        "processor": Kind(workdir / "processor", workdir / "processor" / "vlm", save_processor),
        "adapter": Kind(workdir / "adapter", workdir / "adapter" / "adapter", save_adapter),
        "checkpoint": Kind(workdir / "checkpoint", workdir / "checkpoint" / "run" / "checkpoint-1", save_checkpoint),
        "complete": Kind(workdir / "complete", workdir / "complete" / "vlm", save_folder),
        "race": Kind(workdir / "race", workdir / "race" / "vlm", save_model),
        "race_processor": Kind(workdir / "race", workdir / "race" / "vlm", save_processor),
    }
    processor.save_pretrained(every["model"].destination)
    model.save_pretrained(every["processor"].destination)
    processor.save_pretrained(every["race"].destination)
    return every


def kill_rounds(kind: Kind, rng: random.Random, snapshots: Path) -> dict:
    """Kill saves until KILLS of them were killed while saving; the two whole versions are copied to
    `snapshots`/A and `snapshots`/B, for the test to load."""
    prints, lengths = {}, []
    for version in ("A", "B"):
        lengths.append(kind.save_whole(version))
        prints[version] = fingerprint(kind.destination)
        shutil.copytree(kind.destination, snapshots / version)
    rounds, kills, found = [], 0, prints["B"]
    while kills < KILLS and len(rounds) < MAX_ROUNDS:
        old, new = ("A", "B") if found == prints["A"] else ("B", "A")
        pid, start = started(lambda version=new: kind.save(version))
        # Over the length of the latest whole saves: the machine's speed drifts while the workers run.
        time.sleep(max(0.0, start + rng.uniform(0, statistics.median(lengths[-3:])) - time.monotonic()))
        os.kill(pid, signal.SIGKILL)
        killed = finish(pid) == -signal.SIGKILL
        kills += killed
        found = fingerprint(kind.destination)
        result = {
            "killed": killed,
            "state": "old" if found == prints[old] else "new" if found == prints[new] else f"neither: {found}",
            "left_by_kill": hidden(kind.root),
        }
        if len(rounds) % WHOLE_SAVE_EVERY == WHOLE_SAVE_EVERY - 1 or kills == KILLS:
            lengths.append(kind.save_whole(new))
            found = fingerprint(kind.destination)
            result["whole_save_is_new"] = found == prints[new]
            result["left_after_whole_save"] = hidden(kind.root)
        rounds.append(result)
    return {"save_seconds": lengths, "rounds": rounds}


def publishing_together(work, arrived: int, go: int):
    """`work`, whose first publish waits until the other racer has reached its own: the two saves publish at the
    same instant, the tightest race there is."""

    def run():
        publish = atomic_save.publish

        def at_once(*args, **kwargs):
            atomic_save.publish = publish
            os.write(arrived, b"a")
            os.read(go, 1)
            publish(*args, **kwargs)

        atomic_save.publish = at_once
        work()

    return run


def race_rounds(first, second, expected: set[str | None], kind: Kind, reset=None) -> list[dict]:
    """Run `first` and `second` in two children that publish at once, RACES times (after `reset`, when given);
    fingerprint the destination after each race."""
    results = []
    for _ in range(RACES):
        if reset is not None:
            reset()
        (arrived_read, arrived), (go, go_write) = os.pipe(), os.pipe()
        pids = [in_child(publishing_together(work, arrived, go)) for work in (first, second)]
        for _ in pids:
            if not select.select([arrived_read], [], [], 60)[0]:
                raise RuntimeError("a racer never reached its publish step")
            os.read(arrived_read, 1)
        os.write(go_write, b"gg")
        codes = [finish(pid) for pid in pids]
        for fd in (arrived_read, arrived, go, go_write):
            os.close(fd)
        found = fingerprint(kind.destination)
        results.append({"codes": codes, "expected": found in expected, "left": hidden(kind.root)})
    return results


def races(model: Kind, processor: Kind) -> dict:
    """Two saves of a model at once; then a model and a processor saved into one folder at once, where the one that
    publishes last must keep the other's files."""
    versions = set()
    for version in ("A", "B"):
        model.save_whole(version)
        versions.add(fingerprint(model.destination))
    same = race_rounds(lambda: model.save("A"), lambda: model.save("B"), versions, model)

    model.save_whole("B"), processor.save_whole("B")
    both = fingerprint(model.destination)

    def reset():
        model.save_whole("A"), processor.save_whole("A")

    mixed = race_rounds(lambda: model.save("B"), lambda: processor.save("B"), {both}, model, reset)
    return {"race_same_save": same, "race_model_and_processor": mixed}


def in_worker(work, output: Path) -> int:
    """Fork a worker that writes `work()` as JSON to `output`."""
    return in_child(lambda: output.write_text(json.dumps(work())), watchdog=False)


def main(vision: str, language: str, workdir: str, seed: str) -> None:
    workdir = Path(workdir)
    every = kinds(vision, language, workdir)
    names = ["model", "processor", "adapter", "checkpoint", "complete"]
    reports = {name: workdir / f"{name}.json" for name in [*names, "races"]}
    workers = [
        in_worker(
            lambda name=name: kill_rounds(every[name], random.Random(f"{seed}-{name}"), workdir / "whole" / name),
            reports[name],
        )
        for name in names
    ]
    workers.append(in_worker(lambda: races(every["race"], every["race_processor"]), reports["races"]))
    for pid in workers:
        if finish(pid, timeout=600) != 0:
            raise RuntimeError("a worker failed; see above")
    report = {name: json.loads(reports[name].read_text()) for name in names}
    print(json.dumps({**report, **json.loads(reports["races"].read_text())}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
