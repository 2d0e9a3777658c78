"""Opening the files a run reads, and telling what went wrong with a path in one line.

Every file bninspect reads (--input, --output, --against, a vector's .npy) is opened here, once:
refused unless it is a regular file (a FIFO or a device would block the read forever, a
directory has no bytes), by its kind, before it is opened; then opened without blocking and
checked again on the open descriptor, so a name swapped for a FIFO between the two cannot hang
the run either. Everything is read through that one descriptor, and ``check_unchanged`` tells
afterwards whether the file changed meanwhile (a torn read).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from bninspect.errors import BnInspectError

# What a path is, when it is not a regular file.
_KINDS = (
    (stat.S_ISDIR, "is a directory; give a .npy file"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file; save the array to a .npy file"),
    (stat.S_ISCHR, "is a character device, not a regular file; give a .npy file"),
    (stat.S_ISBLK, "is a block device, not a regular file; give a .npy file"),
    (stat.S_ISSOCK, "is a socket, not a regular file; give a .npy file"),
)


# The same kinds in words, for files other than .npy (--weights, --program, --model's file).
_KIND_NAMES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_problem(mode: int, wanted: str | None = None) -> str | None:
    """Why a file of this ``st_mode`` cannot be read, or None (a regular file); ``wanted``
    says what to give instead (default: a .npy file)."""
    if stat.S_ISREG(mode):
        return None
    if wanted is not None:
        kind = next((name for test, name in _KIND_NAMES if test(mode)), "not a regular file")
        if kind != "not a regular file":
            kind = f"{kind}, not a regular file" if kind != "a directory" else kind
        return f"is {kind}; give {wanted}"
    for test, problem in _KINDS:
        if test(mode):
            return problem
    return "is not a regular file; give a .npy file"


def path_problem(error: OSError, path: Path) -> str:
    """The one-line reason (without the path) for an OSError raised on ``path``."""
    code = error.errno
    if code == errno.ENOENT:
        if _is_dangling_link(path):
            return "is a symbolic link to a file that does not exist; check the link"
        return "no such file; check the path"
    if code == errno.ELOOP:
        return "too many levels of symbolic links (a loop?); check the links on the path"
    if code == errno.ENAMETOOLONG:
        return (
            "name too long (a file name may have at most 255 bytes, a path 4096); give a "
            "shorter path"
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            "permission denied (reading the file, or searching a directory on its path); "
            "check the permissions"
        )
    if code == errno.ENOTDIR:
        return "a part of the path is not a directory; check the path"
    if code == errno.EISDIR:
        return "is a directory; give a .npy file"
    reason = error.strerror or type(error).__name__
    return f"could not be opened ({reason}); check the path and the disk"


def _is_dangling_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def refuse(what: str, path: Path, problem: str, error: type = BnInspectError) -> BnInspectError:
    """The error ``what path: problem`` (the CLI escapes what a terminal would act on). A
    directory as --input is never read whole: the message names the pattern of its files that
    run --stats-only streams (docs/distributed.md)."""
    if what == "--input" and problem.startswith("is a directory"):
        problem = (
            "is a directory; give a .npy file, or to stream its files (run --stats-only) a "
            f"quoted pattern: --input '{path / '*.npy'}'"
        )
    return error(f"{what} {path}: {problem}")


@dataclass(frozen=True)
class Snapshot:
    """What identifies a file's content on the open descriptor: a write changes the size or
    the modification time (or the change time)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> Snapshot:
        return cls(
            status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns
        )


class OpenFile:
    """A regular file opened for reading by ``open_regular``: ``fd``, and its ``snapshot`` at
    opening. Close it (or use it as a context manager) when done."""

    def __init__(self, path: Path, what: str, fd: int, snapshot: Snapshot) -> None:
        self.path, self.what, self.fd, self.snapshot = path, what, fd, snapshot

    @property
    def size(self) -> int:
        return self.snapshot.size

    def identity(self) -> tuple[int, int]:
        return self.snapshot.device, self.snapshot.inode

    def pread(self, count: int, offset: int) -> bytes:
        try:
            return os.pread(self.fd, count, offset)
        except OSError as exc:
            raise self.error(f"could not be read ({exc.strerror or exc}); check the disk") from None

    def error(self, problem: str) -> BnInspectError:
        return refuse(self.what, self.path, problem)

    def check_unchanged(self) -> None:
        """Raise if the file changed since it was opened: written to, truncated or extended
        (size, modification or change time), so what was read may mix old and new bytes.
        Coarse file-system clocks can hide a write within the same tick as the last one
        before opening."""
        try:
            now = Snapshot.of(os.fstat(self.fd))
        except OSError as exc:
            raise self.error(f"could not be checked ({exc.strerror or exc})") from None
        before = self.snapshot
        if now.size != before.size:
            raise self.error(
                f"changed while it was read (its size went from {before.size} to {now.size} "
                "bytes); run again when nothing is writing to it"
            )
        if (now.mtime_ns, now.ctime_ns) != (before.mtime_ns, before.ctime_ns):
            raise self.error(
                "changed while it was read (it was written to meanwhile), so the values read "
                "may mix old and new ones; run again when nothing is writing to it"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # a run refused after opening its input lets go of it here
        try:
            self.close()
        except OSError:
            pass

    def __enter__(self) -> OpenFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def stat_regular(path: Path, what: str, wanted: str | None = None) -> os.stat_result:
    """The status of ``path`` (following links), raising the one-line error if there is no
    regular file there (``wanted``: what to give instead, as for kind_problem)."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise refuse(what, path, path_problem(exc, path)) from None
    except ValueError:  # an embedded NUL byte
        raise refuse(what, path, "not a valid path; check it") from None
    problem = kind_problem(status.st_mode, wanted)
    if problem is not None:
        raise refuse(what, path, problem)
    return status


def open_regular(path: Path, what: str, wanted: str | None = None) -> OpenFile:
    """Open ``path`` for reading if it is a regular file (checked before opening, and again on
    the descriptor); ``what`` names it in messages, e.g. "--input"."""
    before = stat_regular(path, what, wanted)
    try:
        # O_NONBLOCK: should the name have become a FIFO since, opening it must not wait for a
        # writer; it changes nothing for a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(what, path, path_problem(exc, path)) from None
    try:
        status = os.fstat(fd)
        problem = kind_problem(status.st_mode, wanted)
        if problem is not None:
            raise refuse(what, path, problem)
        if (status.st_dev, status.st_ino) != (before.st_dev, before.st_ino):
            raise refuse(what, path, "was replaced while being opened; run again")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(path, what, fd, Snapshot.of(status))


def read_regular(path: Path, what: str, wanted: str | None = None) -> bytes:
    """The whole of a regular file, read through one descriptor opened by ``open_regular`` and
    checked unchanged afterwards (for files read whole by a library: torch.load, a module's
    source)."""
    with open_regular(path, what, wanted) as f:
        chunks, offset = [], 0
        while chunk := f.pread(1 << 24, offset):
            chunks.append(chunk)
            offset += len(chunk)
        f.check_unchanged()
    return b"".join(chunks)


# The hidden temporary files of this process that exist now (npy_files writes and removes
# them): what an interrupting signal's handler removes before the process ends. Whoever
# creates, lands or removes them holds TEMPORARIES_LOCK meanwhile, and so does the handler
# (cli/process.py), so it never finds a file created but not yet registered, nor files half
# landed: it waits until they are all in place, or all taken back.
TEMPORARIES: set[str] = set()
TEMPORARIES_LOCK = threading.Lock()


def remove_temporaries() -> int:
    """Remove every temporary file still registered (hold TEMPORARIES_LOCK); how many were
    removed."""
    removed = 0
    for name in list(TEMPORARIES):
        try:
            os.unlink(name)
            removed += 1
        except OSError:
            pass
        TEMPORARIES.discard(name)
    return removed
