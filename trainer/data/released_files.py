"""The files of the CMG authors' feature releases, read safely: the zip members holding one pickled numpy array
each (``read_zip_array``, through ``ArrayUnpickler``) and the metadata tables (``read_table``). What the files
mean, and the sets built from them: ``trainer.data.released``.

The pickles are read by ``ArrayUnpickler``, which reconstructs numpy arrays (and scalars, then refused as not arrays)
and nothing else, as numpy 1.x (a release written by Python 3.7: ``numpy.core.multiarray``) and numpy 2
(``numpy._core``) name them: every other global a pickle names is refused, so a crafted member cannot run code. The
metadata CSVs are read by the csv module (a UTF-8 BOM dropped, quoting honoured, a row of the wrong width refused as
``file:line``). Any unusable file raises ``ReleasedFormatError`` naming the file and member (or line).
"""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.features import FeatureError

MAX_PICKLE_BYTES = 64 << 20   # a video member is 10·7·7·512 float64 = 2 MB; anything far larger is refused unread


class ReleasedFormatError(FeatureError):
    """A released file that cannot be used; the message names the file (and the zip member or CSV line)."""


# --- the restricted unpickler ---

def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 only; no codec lookup by name)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode to {encoding!r}")
    return text.encode("latin-1")


def _array_globals() -> dict[tuple[str, str], Any]:
    """The globals an ndarray pickle names (numpy 1.x writes ``numpy.core``, numpy 2 ``numpy._core``; a release
    written by Python 3.7 names ``numpy.core.multiarray._reconstruct``), and ``scalar``, which rebuilds a numpy
    scalar from its dtype and bytes: a pickled scalar is then reported as what it holds, not as a refused global."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:   # older numpy 1.x has no numpy._core
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct   # protocols 0-4
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer          # protocol 5
    return allowed


ARRAY_GLOBALS = _array_globals()


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays only: ``find_class`` (through which every global of a pickle is looked up, the
    ``copyreg`` extension codes included) admits the array constructors in ``ARRAY_GLOBALS`` and refuses the rest,
    so a pickle cannot reach ``os.system``, ``builtins.eval`` or any other callable."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are unpickled)") from None


def unpickle_array(data: bytes, where: str) -> np.ndarray:
    """A pickled numeric numpy array -> the array; anything else raises ``ReleasedFormatError`` naming ``where``."""
    try:
        # latin-1: how Python 3 reads numpy arrays that Python 2 pickled (numpy's own advice)
        obj = ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:   # untrusted bytes: the refusal above, or any way a malformed pickle fails to load
        raise ReleasedFormatError(f"{where}: not a pickled numpy array ({type(err).__name__}: {err})") from err
    if type(obj) is not np.ndarray:
        raise ReleasedFormatError(f"{where}: holds a {type(obj).__name__}, not a numpy array")
    if obj.dtype.kind not in "biuf":
        raise ReleasedFormatError(f"{where}: holds a {obj.dtype} array, not a numeric one")
    return obj


def read_zip_array(path: Path) -> tuple[np.ndarray, str]:
    """The array pickled in the one ``.pkl`` member of the zip ``path`` (other members are ignored, as by the
    authors' ``_load_fea``; zero or several ``.pkl`` members are an error), and ``path:member`` for messages."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist() if not i.is_dir() and i.filename.endswith(".pkl")]
            if len(members) != 1:
                raise ReleasedFormatError(f"{path}: expected one .pkl member, found "
                                          f"{[i.filename for i in members] or 'none'} in {archive.namelist()}")
            info = members[0]
            if info.file_size > MAX_PICKLE_BYTES:
                raise ReleasedFormatError(f"{path}:{info.filename}: {info.file_size} bytes uncompressed, more than "
                                          f"{MAX_PICKLE_BYTES} (refused unread)")
            data = archive.read(info)
    except FileNotFoundError:
        raise ReleasedFormatError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, zlib.error, EOFError, OSError) as err:
        raise ReleasedFormatError(f"{path}: not a readable zip ({type(err).__name__}: {err})") from err
    where = f"{path}:{info.filename}"
    return unpickle_array(data, where), where


# --- arrays ---


def read_table(path: str | Path, columns: Sequence[str] = (), delimiter: str = ",") -> tuple[
        list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the (line, row) of a CSV (TSV: ``delimiter="\\t"``) with a header row, read by the csv module:
    a UTF-8 BOM dropped (spreadsheets write one), quoted fields as written, names and values stripped, blank lines
    skipped. The header must hold ``columns``; a row with more fields than the header (an unquoted comma inside a
    category name) or fewer is refused with its line number, as is one the csv module cannot parse. Empty fields past
    the header's (``a,b,c,``) are dropped. ``line``: the line the row starts on."""
    separator = "a comma" if delimiter == "," else "a tab" if delimiter == "\t" else repr(delimiter)
    line = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise ReleasedFormatError(f"{path}: no column {missing} in the header {header}")
            rows, line = [], reader.line_num
            for fields in reader:
                start, line = line + 1, reader.line_num
                while len(fields) > len(header) and not fields[-1].strip():
                    fields.pop()
                if not fields:
                    continue
                if len(fields) != len(header):
                    hint = f" ({separator} inside a value needs quotes)" if len(fields) > len(header) else ""
                    raise ReleasedFormatError(f"{path}:{start}: {len(fields)} fields, expected {len(header)} "
                                              f"({', '.join(header)}){hint}")
                rows.append((start, {k: v.strip() for k, v in zip(header, fields)}))
    except FileNotFoundError:
        raise ReleasedFormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise ReleasedFormatError(f"{path}: not UTF-8 ({err})") from None
    except csv.Error as err:
        raise ReleasedFormatError(f"{path}:{line + 1}: {err}") from None
    return header, rows
