"""Reading ``.npz`` archives without trusting them: one reader, one voice for file problems.

Design
------
a. Both :meth:`fastbp.nn.Module.load` and :func:`fastbp.io.load_model` read through
   :func:`read_arrays`, so a bad file gets the same message wherever it is opened.
b. Nothing is allocated from what a file merely claims.  Each member's ``.npy`` header is
   parsed first (``np.lib.format``, header size capped) and checked: a plain numeric or string
   dtype (an object dtype would mean unpickling: refused, never executed), and a shape whose
   byte size equals the bytes the zip directory says the member holds.  Only then are exactly
   those bytes read, so a tampered header cannot ask for terabytes, and a member is never
   decompressed past its declared size.
c. Every problem with the file's contents raises ``ValueError("<file>: <what is wrong>")``.
   A missing file stays ``FileNotFoundError`` (and other operating-system failures to open it
   stay ``OSError``): those are not problems with the contents.
"""

import math
import os
import tokenize
import zipfile
import zlib

import numpy as np

__all__ = ["read_arrays", "source_name"]

#: Largest ``.npy`` header accepted (NumPy's own default limit for untrusted files).
MAX_HEADER_SIZE = 10_000
#: dtype kinds an archive may hold: booleans, integers, floats, strings (never objects).
_KINDS = "biufU"
#: what a zip directory that is not one can raise when it is opened (found by fuzz/)
_NOT_A_ZIP = (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError)
#: what a corrupted member can raise while it is decompressed and its header parsed (NumPy's
#: header parser tokenizes it: a broken header can raise tokenize.TokenError, and a header dict
#: with bytes keys TypeError from sorting them -- both found by fuzz/)
_CORRUPT = (ValueError, SyntaxError, RecursionError, EOFError, OSError, zipfile.BadZipFile,
            zlib.error, NotImplementedError, RuntimeError, tokenize.TokenError, TypeError)


def source_name(source):
    """How error messages name `source`: the path, or the file object's repr."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)


def read_arrays(source):
    """Every array of the ``.npz`` archive `source`, by name, read without trusting the file.

    Parameters
    ----------
    source : str, os.PathLike or binary file object
        An archive written by ``np.savez`` / ``np.savez_compressed``.

    Returns
    -------
    dict of str -> numpy.ndarray
        Entry name (without ``.npy``) -> a new writeable C-contiguous array.

    Raises
    ------
    FileNotFoundError, OSError
        If `source` cannot be opened.
    ValueError
        If it is not a zip archive, or a member is not a valid ``.npy`` array of a plain numeric
        or string dtype whose header agrees with its size (truncated, corrupted, pickled data,
        duplicate names).  The message starts with the file's name.
    """
    name = source_name(source)
    try:
        archive = zipfile.ZipFile(source)
    except _NOT_A_ZIP as e:
        raise ValueError(f"{name}: not an .npz file (not a zip archive: {e})") from None
    arrays = {}
    with archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if key == info.filename:
                raise ValueError(f"{name}: entry {info.filename!r} is not an .npy array")
            if key in arrays:
                raise ValueError(f"{name}: entry {key!r} appears more than once")
            try:
                arrays[key] = _read_member(archive, info)
            except _CORRUPT as e:
                raise ValueError(f"{name}: entry {key!r} is not a readable array "
                                 f"({type(e).__name__}: {e})") from None
    return arrays


def _read_member(archive, info):
    """One member as an array, after checking its header against its size (design note b)."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, MAX_HEADER_SIZE)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, MAX_HEADER_SIZE)
        else:
            raise ValueError(f".npy format version {version} is not supported")
        if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"dtype {dtype} is not a plain numeric or string dtype "
                             "(object arrays would need unpickling: refused)")
        if dtype.itemsize == 0:
            raise ValueError(f"dtype {dtype} has no size")
        nbytes = math.prod(shape) * dtype.itemsize
        declared = info.file_size - f.tell()
        if nbytes != declared:
            raise ValueError(f"its header declares shape {shape} of {dtype} ({nbytes} bytes) but "
                             f"the member holds {declared} bytes after the header")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"truncated: {len(data)} of {nbytes} bytes")
    array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(array, order="C")
