"""Reading and writing .npy files safely: pickles are never loaded; a header is validated in full,
once, before anything its shape sizes is built; a file whose size is not what its header says
is refused before any data is read; everything is read through one open descriptor and checked
unchanged afterwards; nothing is overwritten unasked, and saved files appear whole or not at all.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import mmap
import os
import secrets
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.errors import BnInspectError, OptionError
from bninspect.input.files import (
    TEMPORARIES,
    TEMPORARIES_LOCK,
    OpenFile,
    kind_problem,
    open_regular,
    path_problem,
    refuse,
)

NPY_MAGIC = b"\x93NUMPY"
PICKLE_PROTOCOL = b"\x80"  # the first byte of every pickle since protocol 2
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# numpy's own limit on the header's text (np.lib.format's max_header_size): longer headers are
# refused before they are read, so a header length of 4 GiB cannot make us read 4 GiB.
MAX_HEADER_BYTES = 10000
# The largest element count numpy can index (np.intp).
MAX_ELEMENTS = sys.maxsize


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy file declares about its array, read without reading the data, and checked:
    every size an int >= 0, and the file exactly as long as the header and the data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes from the start of the file to the first element

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def _damaged(file: OpenFile) -> BnInspectError:
    return file.error("the .npy header is damaged; save the array again with numpy.save")


def read_header(source: OpenFile | Path, what: str | None = None) -> NpyHeader:
    """The validated header of an open file, or of the file at a path (opened as
    files.open_regular does, ``what`` naming it); refuses anything that is not a complete .npy
    file of a plain (non-object) dtype whose data is exactly the rest of the file."""
    if not isinstance(source, OpenFile):
        with opened_npy(Path(source), what or "file") as (_, header):
            return header
    file = source
    start = file.pread(len(NPY_MAGIC) + 2, 0)
    if start[:4] == ZIP_MAGIC or (
        start[:1] == PICKLE_PROTOCOL and Path(file.path).suffix in TORCH_SUFFIXES
    ):
        raise file.error(
            f"a PyTorch file (torch.save), not a .npy; for a model's batch norms run bninspect "
            f"model --weights {file.path} (with --model to run a batch), or save one tensor "
            "with numpy.save"
        )
    if start[:1] == PICKLE_PROTOCOL:
        raise file.error(
            "is a Python pickle, not a .npy file, and bninspect never loads pickles; save the "
            "array with numpy.save"
        )
    if start[: len(NPY_MAGIC)] != NPY_MAGIC:
        raise file.error("not a .npy file (no NUMPY magic bytes); save the array with numpy.save")
    if len(start) < len(NPY_MAGIC) + 2:
        raise _damaged(file)
    version = (start[-2], start[-1])
    if version not in ((1, 0), (2, 0)):
        raise file.error(
            f".npy format version {version[0]}.{version[1]} is not supported; save a plain "
            "numeric array with numpy.save"
        )
    length_format = "<H" if version == (1, 0) else "<I"
    length_bytes = file.pread(struct.calcsize(length_format), len(start))
    if len(length_bytes) < struct.calcsize(length_format):
        raise _damaged(file)
    (length,) = struct.unpack(length_format, length_bytes)
    if length > MAX_HEADER_BYTES:
        raise file.error(
            f"the .npy header claims {length} bytes, more than numpy ever writes "
            f"({MAX_HEADER_BYTES}); save the array again with numpy.save"
        )
    data_offset = len(start) + len(length_bytes) + length
    head = file.pread(data_offset, 0)
    if len(head) < data_offset:
        raise _damaged(file)
    try:  # numpy parses the untrusted text (literal_eval, never eval); any failure is damage
        parse = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = parse(io.BytesIO(head[len(start) :]))
    except Exception:
        raise _damaged(file) from None
    header = NpyHeader(tuple(shape), np.dtype(dtype), bool(fortran_order), data_offset)
    _check_sizes(file, header)
    return header


def _check_sizes(file: OpenFile, header: NpyHeader) -> None:
    """Refuse sizes numpy's parser lets through (negative, bool) or no array can have, and a
    file whose length is not the header's plus the data's, all before anything is built."""
    for axis, size in enumerate(header.shape):
        if type(size) is not int or size < 0:  # bool is an int to numpy's check
            raise file.error(
                f"the .npy header's shape {header.shape!r} has {size!r} on axis {axis}, "
                "which is not a size (an integer >= 0); the file is damaged, save the array "
                "again with numpy.save"
            )
    if header.dtype.hasobject:
        raise file.error(
            "holds Python objects (a pickle), which bninspect never loads; save a numeric "
            "array, e.g. numpy.save(path, np.asarray(x, dtype=np.float32))"
        )
    if header.count > MAX_ELEMENTS:
        raise file.error(
            f"the .npy header's shape {header.shape!r} has {header.count} elements, more than "
            "any array can hold; the file is damaged, save the array again with numpy.save"
        )
    expected = header.data_offset + header.nbytes
    if file.size < expected:
        raise file.error(
            f"truncated: the header promises {expected} bytes but the file has {file.size}; "
            "copy or save it again"
        )
    if file.size > expected:
        raise file.error(
            f"has {file.size - expected} bytes after the array its header describes "
            f"({expected} bytes in all), which numpy.save never writes (several arrays saved "
            "into one file?); save the array alone with numpy.save"
        )


@contextmanager
def opened_npy(path: Path, what: str) -> Iterator[tuple[OpenFile, NpyHeader]]:
    """``path`` opened (a regular file only, see files.open_regular) and its header validated;
    closed on leaving. ``what`` names the file in messages, e.g. "--input"."""
    file = open_regular(Path(path), what)
    try:
        yield file, read_header(file)
    finally:
        file.close()


# Bytes per read of read_data: np.load's single fromfile call took 0.9-3 s for 1 GiB here,
# reads of this size into one preallocated array 0.26-0.33 s.
READ_BYTES = 64 << 20


def _flat_bytes(array: np.ndarray) -> memoryview:
    """The bytes of a C- or Fortran-contiguous array, in memory order."""
    return memoryview(np.ravel(array, order="K").view(np.uint8))


def read_data(
    file: OpenFile,
    header: NpyHeader,
    on_bytes: Callable[[memoryview], object] | None = None,
    dtype: np.dtype | None = None,
    on_values: Callable[[np.ndarray], object] | None = None,
) -> np.ndarray:
    """The array of a vetted .npy file, read in READ_BYTES reads into memory of its own (in
    the file's order, C or Fortran), converted block by block to ``dtype`` if given, so a
    conversion never holds the file's array beside it. ``on_bytes`` is given every byte of the
    file, in order, as soon as it is in memory (and never written again); ``on_values`` each
    block's values as stored. Checks afterwards that the file did not change meanwhile."""
    target = header.dtype if dtype is None else np.dtype(dtype)
    order = "F" if header.fortran_order else "C"
    array = np.empty(header.shape, target, order=order)
    tell = on_bytes or (lambda _bytes: None)
    tell(memoryview(file.pread(header.data_offset, 0)))
    converting = target != header.dtype
    destination = _flat_bytes(array)
    if converting:
        values_per_read = max(1, READ_BYTES // max(header.dtype.itemsize, 1))
        buffer = np.empty(min(header.count, values_per_read), header.dtype)
        flat_target = np.ravel(array, order="K")
    done, total = 0, header.nbytes
    while done < total:
        if converting:
            first = done // header.dtype.itemsize
            count = min(buffer.size, header.count - first)
            view = memoryview(buffer[:count].view(np.uint8))
        else:
            view = destination[done : done + READ_BYTES]
        got = _read_into(file, view, header.data_offset + done)
        if got < len(view):
            raise file.error(
                f"ended after {header.data_offset + done + got} bytes while being read (was "
                "it changed meanwhile?); run again on a complete file"
            )
        tell(view)
        if converting:
            if on_values is not None:
                on_values(buffer[:count])
            with np.errstate(over="ignore", invalid="ignore"):  # beyond a smaller dtype: inf
                flat_target[first : first + count] = buffer[:count]
        elif on_values is not None:
            on_values(np.frombuffer(view, header.dtype))
        done += len(view)
    file.check_unchanged()
    return array


def _read_into(file: OpenFile, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset``; fewer bytes only at the end of the file."""
    got = 0
    while got < len(view):
        try:
            n = os.preadv(file.fd, [view[got:]], offset + got)
        except OSError as exc:
            raise file.error(f"could not be read ({exc.strerror or exc}); check the disk") from None
        if n == 0:
            break
        got += n
    return got


class BackgroundSha256:
    """The SHA-256 of bytes fed in order, hashed on a thread of its own as they come (hashlib
    releases the GIL): hashing a file while it is read takes the hash, ~1 s per GiB on a
    core here, off the path to the result."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sha256")

    def feed(self, data: memoryview) -> None:
        self._thread.submit(self._digest.update, data)

    def hexdigest(self) -> Future:
        """The hex digest of everything fed, once it is hashed; feed nothing after."""
        pending = self._thread.submit(self._digest.hexdigest)
        self._thread.shutdown(wait=False)  # the thread ends with the hash
        return pending


def read_hashed(
    path: Path, what: str, dtype: np.dtype | None = None
) -> tuple[np.ndarray, NpyHeader, str]:
    """A whole .npy array (as ``dtype`` if given, converted block by block), its header and
    the SHA-256 of the file's bytes as read, through one opening."""
    with opened_npy(path, what) as (file, header):
        digest = hashlib.sha256()
        array = read_data(file, header, digest.update, dtype)
    return array, header, digest.hexdigest()


def read_array(path: Path, what: str, dtype: np.dtype | None = None) -> np.ndarray:
    """A whole .npy array (as ``dtype`` if given), validated, through one opening."""
    return read_hashed(path, what, dtype)[0]


def sha256_of(path: Path, what: str = "file") -> str:
    """Hex SHA-256 of a regular file's bytes, read in 1 MiB blocks through one opening and
    checked unchanged after (prefer read_hashed, which hashes the very bytes it returns)."""
    digest = hashlib.sha256()
    with open_regular(Path(path), what) as file:
        position = 0
        while block := file.pread(1 << 20, position):
            digest.update(block)
            position += len(block)
        file.check_unchanged()
    return digest.hexdigest()


def read_element(
    path: Path, what: str, index: tuple[int, ...], check: Callable[[NpyHeader], None]
) -> tuple[float, NpyHeader, str]:
    """One element of a .npy array as a float, its header (``check``-ed before anything is
    read) and the SHA-256 of the whole file, streamed through in 1 MiB blocks: bounded memory
    whatever the file's size."""
    with opened_npy(path, what) as (file, header):
        check(header)
        order = "F" if header.fortran_order else "C"
        flat = int(np.ravel_multi_index(index, header.shape, order=order))
        offset = header.data_offset + flat * header.dtype.itemsize
        digest, position = hashlib.sha256(), 0
        while position < file.size:
            block = file.pread(min(1 << 20, file.size - position), position)
            if not block:
                break
            digest.update(block)
            position += len(block)
        raw = file.pread(header.dtype.itemsize, offset)
        if position < file.size or len(raw) < header.dtype.itemsize:
            raise file.error("ended while being read (was it changed meanwhile?); run again")
        file.check_unchanged()
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(np.frombuffer(raw, header.dtype)[0].astype(np.float64))
    return value, header, digest.hexdigest()


class MappedFile:
    """A vetted C-order .npy file memory-mapped read-only: its ``array`` (no data read yet).
    If the file shrinks meanwhile, reading past its new end gives zeros instead of killing the
    process with SIGBUS (input._mapguard); ``check_unchanged`` then says so, as it says any
    change to the file, which the mapping would show half-made."""

    def __init__(self, file: OpenFile, header: NpyHeader) -> None:
        from bninspect.input import _mapguard

        self.file, self.header = file, header
        try:
            self.mapping = mmap.mmap(file.fd, file.size, access=mmap.ACCESS_READ)
        except (OSError, ValueError, OverflowError) as exc:
            raise file.error(
                f"could not be memory-mapped ({getattr(exc, 'strerror', None) or exc}); drop "
                "--stats-only to read it instead"
            ) from None
        if hasattr(mmap, "MADV_HUGEPAGE"):
            # Linux then reads a cold file in 2 MiB folios and maps them whole: measured here,
            # a cold 256 MiB file read 4x faster, and a warm one streams without 4 KiB faults.
            try:
                self.mapping.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # a kernel without transparent huge pages: no matter
                pass
        whole = np.frombuffer(self.mapping, np.uint8)
        self._base = whole.__array_interface__["data"][0]
        self._guard = _mapguard.guard(self._base, file.size)
        array = np.frombuffer(self.mapping, header.dtype, header.count, header.data_offset)
        self.array = array.reshape(header.shape)

    def close(self) -> None:
        """Unmap the file (numpy arrays of it must be gone) and close it."""
        from bninspect.input import _mapguard

        _mapguard.release(self._guard)
        self.array = None  # this object's own view of the pages
        self.mapping.close()
        self.file.close()

    def check_unchanged(self) -> None:
        from bninspect.input import _mapguard

        if _mapguard.faulted(self._guard):
            raise self.file.error(
                "shrank while it was read (reading past its new end found nothing); run "
                "again when nothing is writing to it"
            )
        self.file.check_unchanged()


def map_array(source: OpenFile | Path, header: NpyHeader, what: str = "--input") -> MappedFile:
    """Memory-map a vetted .npy file (open, or at a path) read-only."""
    file = source if isinstance(source, OpenFile) else open_regular(Path(source), what)
    if file is not source and read_header(file) != header:
        raise file.error("changed since its header was read; run again")
    if header.fortran_order:
        raise file.error(
            "is stored in Fortran order, which cannot be streamed channel by channel; save it "
            "with numpy.save(path, numpy.ascontiguousarray(x))"
        )
    return MappedFile(file, header)


def release_pages(mapping: mmap.mmap, start: int, end: int) -> None:
    """Drop this process's mapping of the whole pages within bytes [start, end) of the file, so
    resident memory stays at what is being read. The data stays in the page cache."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


# Writing. A saved file is written under no name of its own (O_TMPFILE) or a short hidden one
# (".bninspect-XXXXXXXXXXXXXXXX.tmp": never longer than a name the user may give, and removed
# on an interrupting signal: see files.TEMPORARIES), then linked to its final name, which
# fails rather than replace a file that appeared meanwhile; with --force an existing file is
# replaced, and kept under a hidden name until every file has landed, so a failure puts it back.
_TEMPORARY_PREFIX, _TEMPORARY_SUFFIX = ".bninspect-", ".tmp"
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` (following links), or None."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def _unnamed_file(directory: Path) -> int | None:
    """A file with no name yet in ``directory`` (Linux O_TMPFILE), or None where the file
    system cannot make one (or /proc, through which it gets its name, is missing)."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


def check_writable(
    path: Path, option: str, force: bool, protected: tuple[tuple[int, int], ...] = ()
) -> None:
    """Refuse, before any work is done, to write ``path`` over one of the files this run
    reads (``protected``, their (device, inode); ever), over an existing file or link (unless
    ``force``), over anything but a regular file, or where no file can be created. The probe
    for the last leaves nothing behind: an unnamed file (O_TMPFILE), else a hidden file created
    and removed at once."""

    def refused(problem: str) -> OptionError:
        return refuse(option, path, problem, OptionError)

    protected = tuple(
        p if isinstance(p, tuple) else identity(Path(p)) for p in protected  # paths, or ids
    )
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        status = None
    except OSError as exc:
        raise refused(path_problem(exc, path)) from None
    if status is not None:
        if identity(path) in protected:
            raise refused("is also an input of this run; give a different path")
        if stat.S_ISLNK(status.st_mode) and identity(path) is None:
            if not force:
                raise refused(
                    "is a symbolic link to a file that does not exist; add --force to replace "
                    "the link"
                )
        else:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise refused("is a directory; give a file path")
            if not stat.S_ISREG(mode):
                kind = (kind_problem(mode) or "").split(",")[0].split(";")[0]
                raise refused(f"{kind}; bninspect writes regular files only, give another path")
            if not force:
                raise refused("file exists; add --force to overwrite it")
    directory = path.parent
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            raise refused(f"{directory} is not a directory; check the path")
    except FileNotFoundError:
        raise refused(f"directory {directory} does not exist; create it first") from None
    except OSError as exc:
        raise refused(path_problem(exc, directory)) from None
    if len(os.fsencode(path.name)) > 255:
        raise refused(path_problem(OSError(errno.ENAMETOOLONG, ""), path))
    try:
        fd = _unnamed_file(directory)
        if fd is None:
            probe = _hidden_name(directory)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.unlink(probe)
        os.close(fd)
    except OSError as exc:
        raise refused(
            f"cannot create a file in {directory} ({exc.strerror or exc}); choose another "
            "directory"
        ) from None


def _file_mode(path: Path) -> int:
    """An overwritten file keeps its permissions; a new one gets the usual ones (umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _hidden_name(directory: Path) -> Path:
    return directory / f"{_TEMPORARY_PREFIX}{secrets.token_hex(8)}{_TEMPORARY_SUFFIX}"


def _register(path: Path) -> Path:
    TEMPORARIES.add(str(path))
    return path


def _forget(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    TEMPORARIES.discard(str(path))


class _Pending:
    """One array written to a temporary file beside its target, not yet in place."""

    def __init__(self, target: Path, array: np.ndarray) -> None:
        self.target, self.fd, self.name = target, None, None
        with TEMPORARIES_LOCK:  # no signal's handler between creating and registering
            self.fd = _unnamed_file(target.parent)
            if self.fd is None:
                self.name = _hidden_name(target.parent)
                self.fd = os.open(
                    self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
                _register(self.name)
        with os.fdopen(self.fd, "wb", closefd=False) as f:
            np.save(f, array, allow_pickle=False)
        os.fchmod(self.fd, _file_mode(target))

    def _link_unnamed(self, name: Path) -> None:
        # linkat(..., AT_SYMLINK_FOLLOW) through /proc names the unnamed file; os.link makes
        # that call only when given a directory descriptor (else it calls link(), which
        # would link /proc's symbolic link itself).
        directory = os.open(name.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(
                f"/proc/self/fd/{self.fd}",
                name.name,
                src_dir_fd=directory,
                dst_dir_fd=directory,
                follow_symlinks=True,
            )
        finally:
            os.close(directory)

    def named(self) -> Path:
        """A name for the written file (the unnamed one gets a hidden name now)."""
        if self.name is None:
            name = _register(_hidden_name(self.target.parent))
            self._link_unnamed(name)
            self.name = name
        return self.name

    def link_new(self) -> None:
        """Give the file its final name, failing if that name exists (EEXIST)."""
        if self.name is None:
            self._link_unnamed(self.target)
            return
        try:
            os.link(self.name, self.target)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # No hard links here: claim the name exclusively, then move the file onto it.
            os.close(os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.replace(self.name, self.target)
            TEMPORARIES.discard(str(self.name))
            self.name = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with TEMPORARIES_LOCK:
            if self.name is not None:
                _forget(self.name)
                self.name = None


class _Landed:
    """A file put in place, and how to take it back: remove what was created, or put back
    the file it replaced (kept under a hidden name until every file has landed)."""

    def __init__(self, target: Path, created: tuple[int, int] | None, kept: Path | None):
        self.target, self.created, self.kept = target, created, kept

    def undo(self) -> None:
        if self.kept is not None:
            os.replace(self.kept, self.target)
            TEMPORARIES.discard(str(self.kept))
        elif self.created is not None and identity(self.target) == self.created:
            os.unlink(self.target)

    def finish(self) -> None:
        if self.kept is not None:
            _forget(self.kept)


def _land(pending: _Pending, force: bool) -> _Landed:
    """Put one written file in place."""
    target = pending.target
    try:
        pending.link_new()
        return _Landed(target, identity(target), None)
    except FileExistsError:
        if not force:
            raise
    # --force over an existing file (or link): keep the old one under a hidden name.
    kept = _register(_hidden_name(target.parent))
    try:
        os.link(target, kept, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        os.replace(target, kept)
    os.replace(pending.named(), target)
    TEMPORARIES.discard(str(pending.name))
    pending.name = None
    return _Landed(target, None, kept)


def write_arrays(
    files: list[tuple[Path, np.ndarray]],
    force: bool = False,
    before_landing: Callable[[], None] | None = None,
) -> None:
    """Save each array as .npy at exactly its path (no '.npy' appended), all or none: each is
    written beside its target first; then ``before_landing()`` may still refuse; then all land
    together (see above), an interrupting signal's handler held off meanwhile, and if one
    cannot, those landed are taken back. A file that appeared at a target since the start-up
    check is not replaced without ``force``."""
    pending: list[_Pending] = []
    path = files[0][0] if files else None
    try:
        for path, array in files:
            pending.append(_Pending(path, array))
        if before_landing is not None:
            before_landing()
        with TEMPORARIES_LOCK:  # a signal's handler waits until all have landed, or none
            landed: list[_Landed] = []
            try:
                for item in pending:
                    path = item.target
                    landed.append(_land(item, force))
            except BaseException:
                for done in reversed(landed):
                    try:
                        done.undo()
                    except OSError:
                        pass
                raise
            for done in landed:
                done.finish()
    except FileExistsError:
        raise BnInspectError(
            f"could not write {path}: a file appeared there while bninspect ran, and "
            "it was kept; nothing was written; add --force to overwrite it, or give another "
            "path"
        ) from None
    except OSError as exc:
        raise BnInspectError(
            f"could not write {path}: {exc.strerror or exc}; nothing was written; "
            "check the disk and the path"
        ) from None
    finally:
        for item in pending:
            item.close()
