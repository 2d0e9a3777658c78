"""Reading and writing .npy files safely: pickles are never loaded, truncated or foreign files are
refused with a clear message before any data is read, and nothing is overwritten unasked."""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.errors import BnInspectError, OptionError

NPY_MAGIC = b"\x93NUMPY"
PICKLE_PROTOCOL = b"\x80"  # the first byte of every pickle since protocol 2
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy file declares about its array, read without reading the data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes from the start of the file to the first element


def read_header(path: Path, what: str) -> NpyHeader:
    """Open ``path`` and read its .npy header, refusing anything that is not a complete .npy file
    of a plain (non-object) dtype. ``what`` names the file in messages, e.g. "--input"."""
    if not path.exists():
        raise BnInspectError(f"{what} {path}: no such file; check the path")
    if path.is_dir():
        if what == "--input":  # never read whole: a pattern names the files (distributed.md)
            raise BnInspectError(
                f"--input {path}: is a directory; give a .npy file, or to stream its files "
                f"(run --stats-only) a quoted pattern: --input '{path / '*.npy'}'"
            )
        raise BnInspectError(f"{what} {path}: is a directory; give a .npy file")
    try:
        with path.open("rb") as f:
            start = f.read(len(NPY_MAGIC))
            if start[:4] == ZIP_MAGIC or (
                start[:1] == PICKLE_PROTOCOL and path.suffix in TORCH_SUFFIXES
            ):
                raise BnInspectError(
                    f"{what} {path}: a PyTorch file (torch.save), not a .npy; for a model's "
                    f"batch norms run bninspect model --weights {path} (with --model to run a "
                    "batch), or save one tensor with numpy.save"
                )
            if start[:1] == PICKLE_PROTOCOL:
                raise BnInspectError(
                    f"{what} {path}: is a Python pickle, not a .npy file, and bninspect never "
                    "loads pickles; save the array with numpy.save"
                )
            if start != NPY_MAGIC:
                raise BnInspectError(
                    f"{what} {path}: not a .npy file (no NUMPY magic bytes); save the array "
                    "with numpy.save"
                )
            f.seek(0)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise BnInspectError(
                    f"{what} {path}: .npy format version {version[0]}.{version[1]} is not "
                    "supported; save a plain numeric array with numpy.save"
                )
            data_offset = f.tell()
    except BnInspectError:
        raise
    except PermissionError:
        raise BnInspectError(
            f"{what} {path}: permission denied; check the file's permissions"
        ) from None
    except Exception:  # numpy parses the untrusted header text; any failure means damage
        raise BnInspectError(
            f"{what} {path}: the .npy header is damaged; save the array again with numpy.save"
        ) from None
    header = NpyHeader(tuple(shape), np.dtype(dtype), fortran_order, data_offset)
    if header.dtype.hasobject:
        raise BnInspectError(
            f"{what} {path}: holds Python objects (a pickle), which bninspect never loads; "
            "save a numeric array, e.g. numpy.save(path, np.asarray(x, dtype=np.float32))"
        )
    expected = header.data_offset + int(np.prod(header.shape)) * header.dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise BnInspectError(
            f"{what} {path}: truncated: the header promises {expected} bytes but the file has "
            f"{actual}; copy or save it again"
        )
    return header


# Bytes per read() of read_data: np.load's single fromfile call took 0.9-3 s for 1 GiB here,
# reads of this size into one preallocated array 0.26-0.33 s.
READ_BYTES = 64 << 20


def read_data(
    path: Path, header: NpyHeader, what: str, on_bytes: Callable[[memoryview], object] | None = None
) -> np.ndarray:
    """The array of a vetted C-order .npy file, read into memory in one opening in READ_BYTES
    reads: from then on it is this process's own, whatever happens to the file.
    ``on_bytes`` is given every byte read, in file order, as soon as it is in memory (and
    never written again)."""
    array = np.empty(header.shape, header.dtype)
    view = memoryview(array.reshape(-1)).cast("B")
    tell = on_bytes or (lambda _bytes: None)
    try:
        with path.open("rb", buffering=0) as f:
            head = f.read(header.data_offset)
            tell(memoryview(head))
            done = 0
            while done < len(view) and len(head) == header.data_offset:
                got = f.readinto(view[done : done + READ_BYTES])
                if not got:
                    break
                tell(view[done : done + got])
                done += got
            if len(head) < header.data_offset or done < len(view):
                raise BnInspectError(
                    f"{what} {path}: ended after {len(head) + done} bytes while being read "
                    "(was it changed meanwhile?); run again on a complete file"
                )
            tail = b"".join(iter(lambda: f.read(1 << 20), b""))
            tell(memoryview(tail))
    except OSError as exc:
        raise BnInspectError(f"{what} {path}: could not be read ({exc})") from None
    return array


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


def read_array(path: Path, what: str) -> np.ndarray:
    """Load a whole .npy array (``allow_pickle=False``) after ``read_header`` has vetted it."""
    read_header(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BnInspectError(f"{what} {path}: could not be read as .npy ({exc})") from None


def map_array(path: Path, header: NpyHeader) -> tuple[np.ndarray, mmap.mmap]:
    """Memory-map a vetted .npy file read-only: its array (no data read yet) and the mapping."""
    if header.fortran_order:
        raise BnInspectError(
            f"--input {path}: is stored in Fortran order, which cannot be streamed channel by "
            "channel; save it with numpy.save(path, numpy.ascontiguousarray(x))"
        )
    with path.open("rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # Linux then reads a cold file in 2 MiB folios and maps them whole: measured here,
        # a cold 256 MiB file read 4x faster, and a warm one streams without 4 KiB faults.
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: no matter
            pass
    count = int(np.prod(header.shape))
    array = np.frombuffer(mapping, header.dtype, count, header.data_offset)
    return array.reshape(header.shape), mapping


def release_pages(mapping: mmap.mmap, start: int, end: int) -> None:
    """Drop this process's mapping of the whole pages within bytes [start, end) of the file, so
    resident memory stays at what is being read. The data stays in the page cache."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: Path, option: str, force: bool, protected: tuple[Path, ...]) -> None:
    """Refuse, before any work is done, to write ``path`` over an existing file (unless
    ``force``), over one of the ``protected`` inputs (ever), or where no file can be created:
    a missing or unwritable directory (probed by creating and removing a file there)."""
    resolved = path.resolve()
    for other in protected:
        if resolved == other.resolve():
            raise OptionError(
                f"{option} {path}: is also an input of this run; give a different path"
            )
    if path.is_dir():
        raise OptionError(f"{option} {path}: is a directory; give a file path")
    if path.exists() and not force:
        raise OptionError(f"{option} {path}: file exists; add --force to overwrite it")
    if not path.parent.is_dir():
        raise OptionError(
            f"{option} {path}: directory {path.parent} does not exist; create it first"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OptionError(
            f"{option} {path}: cannot create a file in {path.parent} ({exc.strerror or exc}); "
            "choose another directory"
        ) from None


def _file_mode(path: Path) -> int:
    """An overwritten file keeps its permissions; a new one gets the usual ones (umask)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_arrays(files: list[tuple[Path, np.ndarray]]) -> None:
    """Save each array as .npy at exactly its path (no '.npy' appended), all or none: every
    array goes to a temporary file in its directory first, and only when all are written do
    they replace their targets, so a failure leaves no file half-written or alone."""
    written: list[tuple[str, Path]] = []
    try:
        for path, array in files:
            fd, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
            written.append((temporary, path))
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
            os.chmod(temporary, _file_mode(path))
    except BaseException as exc:
        for temporary, _ in written:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BnInspectError(
                f"could not write {path}: {exc.strerror or exc}; check the disk and the path"
            ) from None
        raise
    for temporary, path in written:
        os.replace(temporary, path)
