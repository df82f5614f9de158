""".npy and .npz files read without trusting them: nothing is unpickled, and every array's header
is checked against the bytes that are really there before anything is allocated.

`read_npz(path)` gives `{key: array}` of an archive written by `np.savez` / `np.savez_compressed`;
`read_npy(path)` one array. An array is read only when its header's shape times its item size
equals the bytes its file or archive member holds, and an archive member only when its
uncompressed size is possible for its compressed size (stored: equal; deflated: at most
`MAX_DEFLATE_RATIO` times larger) and within the archive. So a header that claims 298 GiB, an
object (pickled) array, a corrupt or truncated member, or a .npy given where an .npz belongs is
a `DataError` naming the file and the array, never an allocation or a traceback.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tnn.errors import DataError

MAX_DEFLATE_RATIO = 1100  # deflate cannot expand data by more than ~1032x
KINDS = "biufUS"  # booleans, integers, floats and fixed-width strings (clip ids, class names)
NPY_MAGIC = b"\x93NUMPY"
_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}


def _array(f, size: int, where: str) -> np.ndarray:
    """The array in file object `f` holding `size` bytes (header included)."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in _READERS:
            raise DataError(f"{where}: .npy format version {version} is not supported")
        shape, fortran, dtype = _READERS[version](f)
    except (ValueError, EOFError, SyntaxError) as err:
        raise DataError(f"{where}: not a readable .npy array ({err})") from None
    if dtype.hasobject or dtype.kind not in KINDS or dtype.fields is not None:
        raise DataError(f"{where}: dtype {dtype} is not read (only numbers and strings; nothing "
                        "is unpickled)")
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: the header's shape {shape} is negative")
    need, have = math.prod(shape) * dtype.itemsize, size - f.tell()
    if need != have:
        raise DataError(f"{where}: the header says shape {shape} of {dtype} ({need} bytes) but "
                        f"the file holds {max(have, 0)} bytes of data")
    data, got = bytearray(need), 0
    view = memoryview(data)
    while got < need:
        n = f.readinto(view[got:])
        if not n:
            raise DataError(f"{where}: truncated ({got} of {need} bytes of data)")
        got += n
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read_npy(path: str | Path, what: str | None = None) -> np.ndarray:
    """One array from a .npy file; `DataError` naming `what` (else the path)."""
    where = what or str(path)
    try:
        with open(path, "rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                zipped = zipfile.is_zipfile(f)
                raise DataError(f"{where}: " + ("an .npz archive, not a .npy array" if zipped
                                                else "not a readable .npy array (no .npy "
                                                "header)"))
            f.seek(0)
            return _array(f, os.fstat(f.fileno()).st_size, where)
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except (IsADirectoryError, PermissionError, OSError) as err:
        raise DataError(f"{where}: cannot read ({err.strerror or err})") from None


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, total: int, where: str) -> np.ndarray:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{where}: compression method {info.compress_type} is not read "
                        "(np.savez / np.savez_compressed write stored or deflated members)")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else \
        info.compress_size * MAX_DEFLATE_RATIO + 1024
    if info.compress_size > total or info.file_size > limit:
        raise DataError(f"{where}: the archive claims {info.file_size} bytes from "
                        f"{info.compress_size} compressed in a {total}-byte file: corrupt")
    try:
        with z.open(info) as f:
            return _array(f, info.file_size, where)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
        raise DataError(f"{where}: corrupt archive member ({err})") from None


def read_npz(path: str | Path, keys) -> tuple[dict[str, np.ndarray], list[str]]:
    """(the arrays `keys` that an .npz archive holds, by key; every key it holds): a member
    named KEY.npy; the others are not read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        raise DataError(f"{path}: a .npy array, not an .npz archive (np.savez writes one with "
                        "keys audio, visual, labels)")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable npz file ({err})") from None
    with z:
        total = path.stat().st_size
        members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
        return ({k: _member(z, members[k], total, f"{path}: '{k}'") for k in keys
                 if k in members}, sorted(members))
