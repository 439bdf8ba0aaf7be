"""Small file helpers shared by every writer: atomic writes, content hashes, and the checks every
command makes on its paths before any work (an output it could not write, an input that is not
a file), each refusal one sentence naming the path."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path

from .errors import PassionError

# atomic_path's temp files: .NAME.<pid>.<random>.tmp (older runs wrote .NAME.<random>.tmp)
_TMP = re.compile(r"^\..+?\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
LEGACY_TMP_AGE_S = 3600  # a temp file with no pid in its name is stale once this old


class OutputError(PassionError):
    """An output path a command could not write; found before any work is done."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; on success rename it over `path`, on failure delete it.

    Readers never see a half-written file, and an interrupted writer leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name lets a later run tell a killed writer's leftover from a live one
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def real_path(path: str | os.PathLike) -> Path:
    """The path with links resolved, as Path.resolve() gives it, except that a link loop comes back
    as it is instead of raising (Python 3.11's resolve raises RuntimeError): the loop is then
    refused by name where the file is read."""
    return Path(os.path.realpath(path))


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` is not a regular file one can read, as the end of a sentence that starts with
    the path ("a broken symbolic link to x.png"), or None when it is one."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "does not exist"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a pipe" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        return f"is {kind}, not a regular file"
    return None


def _probe(folder: Path, what: str, path: Path) -> None:
    """Create and delete a file in `folder`: the one test of writability that also holds for root,
    read-only mounts and ACLs (os.access answers for none of them)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".passion-write-check.", dir=folder)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})", path) from None
    os.close(fd)
    os.unlink(tmp)


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def writable_file(path: str | os.PathLike, what: str = "the output") -> Path:
    """Refuse, before any work, an output file that could not be written: it is a folder, a path
    through a file, or in a folder this process cannot write. Sweeps the stale temp files of
    killed runs beside it. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name", path)
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {path}: {not_a_file(path)}", path)
    folder = _existing_ancestor(path.parent)
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is not a folder", path)
    _probe(folder, what, path)
    if folder == path.parent.absolute():
        sweep_stale_temps(folder)
    return path


def writable_dir(path: str | os.PathLike, what: str = "the output folder", beside: bool = False) -> Path:
    """Refuse, before any work, an output folder that could not be written (a file, a path through
    a file, a folder this process cannot write in or create). Sweeps stale temp files in it.
    beside: the folder is built beside it and renamed into place, so its parent must be writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: exists and is not a folder", path)
    folder = _existing_ancestor(path.absolute().parent if beside else path)
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is not a folder", path)
    _probe(folder, what, path)
    if folder == path.absolute():
        sweep_stale_temps(folder)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete atomic_path's temp files a killed run left in `folder`: those whose writer's pid is no
    longer running (or, for names without a pid, older than LEGACY_TMP_AGE_S). A live writer's
    temp file is left alone. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = _TMP.match(e.name)
        if not m or not e.is_file(follow_symlinks=False):
            continue
        pid = m.group("pid")
        try:
            stale = (not _alive(int(pid)) and int(pid) != os.getpid()) if pid else now - e.stat().st_mtime > LEGACY_TMP_AGE_S
            if stale:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed
