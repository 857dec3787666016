"""Writing a folder whole: a save fills a hidden staging folder beside its destination, then swaps it in.

A folder loads as a model once it holds config.json and the weights. Whatever stops a save (an error, a full disk,
SIGKILL) and whoever else saves there at the same time, the destination must be at every instant the previous
complete folder or the new complete one. So:

- a save writes into `.NAME.TOKEN.partial` beside `NAME` and holds an flock on `.NAME.TOKEN.partial.lock` while it
  runs. A staging folder whose lock can be taken belongs to a save that died, and the next save there removes it.
- publishing into an existing folder first brings the folder's other entries into the staging folder (as hard
  links: a model and its processor are saved into one folder one after the other, and each keeps the other's
  files), then swaps the two folders in one step (Linux `renameat2(RENAME_EXCHANGE)`). The old folder, now under
  the staging name, is removed afterwards, or by the next save if this one is killed first.
- creating and cleaning staging folders and publishing hold an flock on the parent folder: two saves into one
  folder publish one after the other, and the last one wins whole (keeping the other files it found there).

Where the exchange is not available (another system, a filesystem without it), the old folder is renamed aside to
`.NAME.being-replaced` and the new one renamed in; a save killed between those two renames leaves no `NAME` until
the next save there renames it back. Where fcntl is missing (Windows), nothing is locked, and staging folders of
dead saves stay.
"""

import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_PARTIAL, _LOCK, _ASIDE = ".partial", ".lock", ".being-replaced"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # no dot: the staging folders of "a" are never those of "a.b"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@contextmanager
def staged_folder(destination: str | os.PathLike, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty staging folder to write the save into; when the block ends without an error, publish it
    into `destination` (see `publish`), keeping the files of an existing destination that the save does not write,
    except those matching a `stale` pattern (earlier weight shards). On an error `destination` stays as it was."""
    destination = _absolute(destination)
    with staging_folder(destination) as staging:
        yield staging
        publish(staging, destination, keep_others=True, stale=stale)


@contextmanager
def staging_folder(destination: str | os.PathLike, token: str | None = None) -> Iterator[Path]:
    """A new empty folder `.NAME.TOKEN.partial` beside `destination`, locked while the block runs and removed after
    it. Staging folders left there by dead saves are removed first. `token` (default: random) names the folder;
    all processes of a distributed run can agree on a fixed one."""
    destination = _absolute(destination)
    staging = staging_path(destination, token or secrets.token_hex(4))
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _parent_locked(destination):
        _recover_aside(destination)
        for path, fd in _claim_dead_stagings(destination):
            _remove(path, fd)
        try:
            lock = _create_locked(Path(f"{staging}{_LOCK}"))
        except FileExistsError:
            raise FileExistsError(f"{staging} is being written by another save into {destination}.") from None
        try:
            os.mkdir(staging, 0o777)  # the umask applies, as to any folder a save makes
        except BaseException:
            _remove(staging, lock)
            raise
    try:
        yield staging
    finally:
        _remove(staging, lock)


def staging_path(destination: str | os.PathLike, token: str) -> Path:
    """Where `staging_folder(destination, token)` puts its folder."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"A staging token holds letters, digits, '_' and '-' only, got {token!r}.")
    destination = _absolute(destination)
    return destination.parent / f".{destination.name}.{token}{_PARTIAL}"


def publish(source: Path, destination: Path, keep_others: bool = True, stale: tuple[str, ...] = ()) -> None:
    """Make the complete folder `source` the folder `destination`, in one step. With `keep_others`, the entries of
    an existing destination that `source` lacks (and that match no `stale` pattern) are kept. Into an existing
    destination, `source` is left holding the old folder, for the caller to remove."""
    destination = _absolute(destination)
    _grant_umask_permissions(source)
    with _parent_locked(destination):
        _recover_aside(destination)
        if not os.path.lexists(destination):
            os.rename(source, destination)
            return
        if not destination.is_dir():
            raise NotADirectoryError(f"Cannot save into {destination}: it exists and is not a folder.")
        if keep_others:
            _bring_over(destination, source, stale)
        os.chmod(source, stat.S_IMODE(destination.stat().st_mode))  # a folder saved again keeps its permissions
        if not _exchange(source, destination):
            aside = _aside(destination)
            os.rename(destination, aside)
            os.rename(source, destination)
            os.rename(aside, source)


def _absolute(destination: str | os.PathLike) -> Path:
    # A link to a folder stays a link: the save goes where it points.
    return Path(os.path.realpath(destination))


def _aside(destination: Path) -> Path:
    return destination.parent / f".{destination.name}{_ASIDE}"


def _recover_aside(destination: Path) -> None:
    """Finish a swap by two renames that was cut short: without the destination, the old folder goes back."""
    aside = _aside(destination)
    if os.path.lexists(aside):
        if os.path.lexists(destination):
            shutil.rmtree(aside)
        else:
            os.rename(aside, destination)


def _grant_umask_permissions(source: Path) -> None:
    """Give every file under `source` the permissions the umask grants a new file: safetensors writes its files
    0600 whatever the umask, which would keep a shared model from the teammates and services meant to read it."""
    granted = stat.S_IMODE(source.stat().st_mode) & 0o666  # `source` was made with mode 0o777 under the umask
    for folder, _, files in os.walk(source):
        for name in files:
            path = os.path.join(folder, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode | granted != mode and not os.path.islink(path):
                os.chmod(path, mode | granted)


def _bring_over(destination: Path, source: Path, stale: tuple[str, ...]) -> None:
    for entry in os.scandir(destination):
        target = source / entry.name
        if os.path.lexists(target):
            continue  # written by this save
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
        elif not any(fnmatch(entry.name, pattern) for pattern in stale):
            _link_or_copy(entry.path, target)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links, or a file another user owns under protected_hardlinks
        shutil.copy2(source, target)


@cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one step; False where the system or the filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@contextmanager
def _parent_locked(destination: Path) -> Iterator[None]:
    """Hold an flock on the destination's parent folder, where staging folders are created, cleaned and published."""
    if fcntl is None:
        yield
        return
    fd = os.open(destination.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise  # otherwise a filesystem that cannot lock folders: saves there are not serialised
        yield
    finally:
        os.close(fd)


def _create_locked(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _claim_dead_stagings(destination: Path) -> list[tuple[Path, int | None]]:
    """The staging folders of `destination` whose save died, with their locks now held by this process."""
    names = {
        entry.removesuffix(_LOCK)
        for entry in os.listdir(destination.parent)
        if _is_staging_of(entry.removesuffix(_LOCK), destination.name)
    }
    if fcntl is None:
        return []  # without locks, a running save cannot be told from a dead one
    claimed = []
    for name in sorted(names):
        staging = destination.parent / name
        try:
            fd = os.open(f"{staging}{_LOCK}", os.O_RDWR)
        except FileNotFoundError:
            claimed.append((staging, None))  # a lock is made before its folder and removed after it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a save still running
            continue
        claimed.append((staging, fd))
    return claimed


def _is_staging_of(name: str, destination: str) -> bool:
    """Whether `name` is `.DESTINATION.TOKEN.partial`, or the staging folder of a save into such a folder (a model
    saved into the staging folder of a whole model-and-processor save), and so on."""
    while name.startswith(".") and name.endswith(_PARTIAL):
        name, _, token = name[1 : -len(_PARTIAL)].rpartition(".")
        if not _TOKEN.fullmatch(token):
            return False
        if name == destination:
            return True
    return False


def _remove(staging: Path, lock: int | None) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if lock is None:
        return
    path = Path(f"{staging}{_LOCK}")
    try:
        same = os.path.samestat(os.fstat(lock), os.stat(path))
    except FileNotFoundError:
        same = False
    if same:
        path.unlink()
    os.close(lock)
