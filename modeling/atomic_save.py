"""Writing a folder whole or not at all: files are written into a hidden sibling folder, then moved into place.

A folder loads as a model once it holds config.json and the weights; an interrupted save (a crash, a full disk,
a killed job) must never leave one that does but is half-written. Standard library only: the model and
processor files that import this are copied into saved folders as remote code.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(
    destination: str | os.PathLike,
    last: tuple[str, ...] = ("config.json", "adapter_config.json"),
    stale: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Yield an empty hidden folder beside `destination` to write into; when the block ends without an error,
    publish it. A new `destination` is the staging folder renamed, in one atomic step. Into an existing one (a
    model and its processor share a folder) the files move one by one: the `last` files, which make a folder
    load (config.json, adapter_config.json), are taken out first and moved in at the end, so the folder only
    looks complete once it is. Files of `destination` matching a `stale` pattern (earlier weight shards) that
    the new save does not hold are removed. On an error the staging folder is deleted and `destination` is
    left as it was."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        yield staging
        _publish(staging, destination, last, stale)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, destination: Path, last: tuple[str, ...], stale: tuple[str, ...]) -> None:
    if not destination.exists():
        os.replace(staging, destination)
        return
    written = {path.name for path in staging.iterdir()}
    finals = [name for name in last if name in written]
    for name in finals:
        (destination / name).unlink(missing_ok=True)
    for pattern in stale:
        for old in destination.glob(pattern):
            if old.name not in written and old.is_file():
                old.unlink()
    for name in sorted(written - set(finals)):
        source, target = staging / name, destination / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(source, target)
    for name in finals:
        os.replace(staging / name, destination / name)
