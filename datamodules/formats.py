"""Readers for the on-disk formats of the data sets, and the download/checksum helpers.

Every reader raises :class:`~datamodules.errors.DataFileError` (naming the file and the fix) on a
missing, truncated or malformed file; the low-level numpy/gzip/zipfile error is chained as its cause,
never left to escape alone.

* ``.amat`` (the ICML 2007 "variations on MNIST" text format, used by RotMNIST): one example per line,
  784 whitespace-separated pixel floats in [0, 1] followed by the label written as a float.
* IDX (the original MNIST format): big-endian magic ``0x00000803`` (2051, images ``(N, rows, cols)``)
  or ``0x00000801`` (2049, labels ``(N,)``), one big-endian uint32 per dimension, then uint8 payload;
  optionally gzip-compressed (``*.gz``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Sequence, Union

import numpy as np

from datamodules.errors import DataFileError

log = logging.getLogger(__name__)

AMAT_PIXELS = 28 * 28
AMAT_COLUMNS = AMAT_PIXELS + 1
# .amat pixels are written as decimal floats; values a rounding error outside [0, 1] are accepted and clipped.
AMAT_PIXEL_TOLERANCE = 1e-4
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
DEFAULT_FIX = "Replace it with an intact copy of the original file"
# Errors that reading a (possibly compressed or zipped) stream can raise on a damaged file.
_STREAM_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


# ---- checksums and downloads ----------------------------------------------------------------------
def md5sum(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file's bytes, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Union[str, Path], expected: str, fix: str) -> None:
    """Raise :class:`DataFileError` (naming expected and actual md5) unless ``path`` has md5 ``expected``."""
    actual = md5sum(path)
    if actual != expected:
        raise DataFileError(
            path,
            f"md5 checksum mismatch: expected {expected}, got {actual} "
            f"(the file is incomplete, corrupt or a different file)",
            fix,
        )


def download_url(
    url: str, destination: Union[str, Path], md5: Optional[str] = None, fix: str = "", timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``destination`` (via ``<destination>.part``), verifying ``md5`` when given.

    A network failure (``URLError``/``OSError``) or a checksum mismatch raises :class:`DataFileError`
    naming ``destination``; nothing is left at ``destination`` in either case. ``file://`` URLs work too,
    which is how the tests exercise this without a network.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    fix = fix or f"Download {url} by hand and save it as {destination}"
    log.info("downloading %s -> %s", url, destination)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise DataFileError(destination, f"could not be downloaded from {url} ({err})", fix) from err
    if md5 is not None:
        actual = md5sum(partial)
        if actual != md5:
            partial.unlink(missing_ok=True)
            raise DataFileError(
                destination,
                f"md5 checksum mismatch for the download from {url}: expected "
                f"{md5}, got {actual} (interrupted transfer or a changed file on "
                f"the server; the download was deleted)",
                fix,
            )
    partial.replace(destination)
    return destination


def gunzip_file(source: Union[str, Path], destination: Union[str, Path], fix: str = DEFAULT_FIX) -> Path:
    """Decompress ``source`` (gzip) to ``destination`` via a ``.part`` file; a bad stream raises DataFileError."""
    destination = Path(destination)
    partial = destination.with_name(destination.name + ".part")
    try:
        with gzip.open(source, "rb") as src, open(partial, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except _STREAM_ERRORS as err:
        partial.unlink(missing_ok=True)
        raise DataFileError(source, f"is not a valid gzip file (truncated or corrupt?): {err}", fix) from err
    partial.replace(destination)
    return destination


def find_file(directories: Iterable[Union[str, Path]], candidates: Sequence[str]) -> Optional[Path]:
    """The first existing ``directory / name`` over ``directories`` (outer loop) and ``candidates``."""
    for directory in directories:
        for name in candidates:
            path = Path(directory) / name
            if path.is_file():
                return path
    return None


# ---- .amat ----------------------------------------------------------------------------------------
def read_amat(
    source: Union[str, Path, BinaryIO],
    name_for_errors: Optional[str] = None,
    fix: str = DEFAULT_FIX,
    chunk_bytes: int = 1 << 26,
) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.amat`` file of 28x28 digits.

    Args:
        source: a path, or a binary file object (e.g. a ``zipfile`` member).
        name_for_errors: how errors name the file (default: the path).
        fix: the advice appended to every error message.
        chunk_bytes: lines are read in blocks of about this many bytes.

    Returns:
        ``images`` float32 ``(N, 28, 28)`` in [0, 1] in the file's own pixel order, ``labels`` int64 ``(N,)``.

    Raises:
        DataFileError: empty file, non-numeric text, a row without exactly 785 values (which row, how many),
        a truncated last row, labels that are not integers in 0..9, pixels outside [0, 1] or not finite,
        or a stream that cannot be read (bad zip member, I/O error).
    """
    name = name_for_errors or str(source)
    if isinstance(source, (str, Path)):
        try:
            handle: BinaryIO = open(source, "rb")
        except OSError as err:
            raise DataFileError(name, f"cannot be opened ({err})", fix) from err
        with handle:
            rows = _read_amat_rows(handle, name, fix, chunk_bytes)
    else:
        rows = _read_amat_rows(source, name, fix, chunk_bytes)

    pixels, raw_labels = rows[:, :AMAT_PIXELS], rows[:, AMAT_PIXELS]
    if not np.isfinite(rows).all():
        bad_row = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0]) + 1
        raise DataFileError(name, f"row {bad_row} contains a non-finite value (nan or inf)", fix)
    labels = np.rint(raw_labels)
    bad = (np.abs(raw_labels - labels) > 1e-6) | (labels < 0) | (labels > 9)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFileError(
            name,
            f"row {row + 1} has label {float(raw_labels[row])}; labels (the last of the "
            f"{AMAT_COLUMNS} columns) must be integers 0..9",
            fix,
        )
    out_of_range = (pixels < -AMAT_PIXEL_TOLERANCE) | (pixels > 1 + AMAT_PIXEL_TOLERANCE)
    if out_of_range.any():
        row, col = (int(i) for i in np.argwhere(out_of_range)[0])
        raise DataFileError(
            name,
            f"row {row + 1} has pixel value {float(pixels[row, col])} in column {col + 1}; pixels must lie in [0, 1]",
            fix,
        )
    images = np.clip(pixels, 0.0, 1.0).reshape(-1, 28, 28)
    return np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64)


def _read_amat_rows(handle: BinaryIO, name: str, fix: str, chunk_bytes: int) -> np.ndarray:
    """All rows of an .amat stream as float32 ``(N, 785)``; see :func:`read_amat` for the checks.

    Each line is parsed on its own with ``np.fromstring`` (C speed, the same cost per value as parsing
    whole blocks), which checks every row's column count exactly at no extra cost.
    """
    rows: list[np.ndarray] = []
    with warnings.catch_warnings():
        # numpy stops at the first unparsable token with a DeprecationWarning; turn it into an error.
        warnings.simplefilter("error", DeprecationWarning)
        while True:
            try:
                lines = handle.readlines(chunk_bytes)
            except _STREAM_ERRORS as err:
                raise DataFileError(name, f"could not be read after row {len(rows)} ({err})", fix) from err
            if not lines:
                break
            for index, line in enumerate(lines):
                if line.isspace():
                    continue
                try:
                    values = np.fromstring(line, dtype=np.float32, sep=" ")
                except (DeprecationWarning, ValueError) as err:
                    raise DataFileError(
                        name, f"row {len(rows) + 1} contains non-numeric text {_first_non_number(line)!r}", fix
                    ) from err
                if values.size != AMAT_COLUMNS:
                    last_line = index == len(lines) - 1 and _at_eof(handle)
                    if last_line and values.size < AMAT_COLUMNS:
                        raise DataFileError(
                            name,
                            f"is truncated: its last row ({len(rows) + 1}) has only "
                            f"{values.size} of {AMAT_COLUMNS} values",
                            fix,
                        )
                    raise DataFileError(
                        name,
                        f"row {len(rows) + 1} has {values.size} columns, expected "
                        f"{AMAT_COLUMNS} ({AMAT_PIXELS} pixels + label)",
                        fix,
                    )
                rows.append(values)
    if not rows:
        raise DataFileError(name, "is empty (no data rows)", fix)
    return np.stack(rows)


def _first_non_number(line: bytes) -> str:
    for token in line.split():
        try:
            float(token)
        except ValueError:
            return token[:40].decode("latin-1")
    return line[:40].decode("latin-1")


def _at_eof(handle: BinaryIO) -> bool:
    """Whether ``handle`` has nothing left to read (only asked once a row is already known to be bad)."""
    try:
        return handle.peek(1) == b"" if hasattr(handle, "peek") else handle.read(1) == b""
    except _STREAM_ERRORS:
        return False


# ---- IDX (MNIST) ----------------------------------------------------------------------------------
def read_idx(path: Union[str, Path], expected_md5: Optional[str] = None, fix: str = DEFAULT_FIX) -> np.ndarray:
    """Read an MNIST IDX file (``*-idx3-ubyte`` images or ``*-idx1-ubyte`` labels, optionally ``.gz``).

    Args:
        path: the file; gzip is detected from its first bytes, not its name.
        expected_md5: md5 of the *decompressed* IDX bytes, checked before parsing when given.
        fix: the advice appended to every error message.

    Returns:
        uint8 array ``(N, rows, cols)`` for magic 2051 or ``(N,)`` for magic 2049.

    Raises:
        DataFileError: missing file, corrupt/truncated gzip stream, md5 mismatch, bad magic number,
        payload shorter or longer than the header's dimensions.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise DataFileError(path, f"cannot be read ({err})", fix) from err
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except _STREAM_ERRORS as err:
            raise DataFileError(path, f"is not a valid gzip stream (truncated or corrupt?): {err}", fix) from err
    if expected_md5 is not None:
        actual = hashlib.md5(raw).hexdigest()
        if actual != expected_md5:
            raise DataFileError(
                path,
                f"md5 checksum mismatch of the decompressed content: expected "
                f"{expected_md5}, got {actual} (modified or corrupt file)",
                fix,
            )
    if len(raw) < 4:
        raise DataFileError(path, f"is too short ({len(raw)} bytes) to be an IDX file", fix)
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise DataFileError(
            path,
            f"has magic number {magic}, expected {IDX_IMAGES_MAGIC} (IDX images) or "
            f"{IDX_LABELS_MAGIC} (IDX labels); not an uncompressed or gzipped MNIST IDX "
            f"file",
            fix,
        )
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(path, f"is truncated inside its header ({len(raw)} of {header} bytes)", fix)
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    payload = len(raw) - header
    if payload < expected:
        raise DataFileError(
            path,
            f"is truncated: its header announces shape {dims} ({expected} bytes) but only {payload} bytes follow",
            fix,
        )
    if payload > expected:
        raise DataFileError(
            path, f"has {payload - expected} bytes after the {expected} that its header shape {dims} announces", fix
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_mnist_pair(
    images_path: Union[str, Path],
    labels_path: Union[str, Path],
    images_md5: Optional[str] = None,
    labels_md5: Optional[str] = None,
    fix: str = DEFAULT_FIX,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)`` from a matching pair of MNIST IDX files."""
    images = read_idx(images_path, images_md5, fix)
    labels = read_idx(labels_path, labels_md5, fix)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFileError(
            images_path,
            f"holds an array of shape {images.shape}, expected MNIST images (N, 28, 28) (magic {IDX_IMAGES_MAGIC})",
            fix,
        )
    if labels.ndim != 1:
        raise DataFileError(
            labels_path,
            f"holds an array of shape {labels.shape}, expected MNIST labels (N,) (magic {IDX_LABELS_MAGIC})",
            fix,
        )
    if len(images) != len(labels):
        raise DataFileError(labels_path, f"has {len(labels)} labels but {images_path} has {len(images)} images", fix)
    if labels.size and labels.max() > 9:
        raise DataFileError(labels_path, f"has label {int(labels.max())}; MNIST labels are 0..9", fix)
    return images, labels.astype(np.int64)


def open_zip_member(
    archive: zipfile.ZipFile, basename: str, archive_path: Union[str, Path], fix: str
) -> io.BufferedIOBase:
    """Open the member of ``archive`` whose file name (in any folder) is ``basename``."""
    members = [info for info in archive.infolist() if Path(info.filename).name == basename]
    if not members:
        listing = ", ".join(info.filename for info in archive.infolist()[:10]) or "nothing"
        raise DataFileError(archive_path, f"has no member {basename!r} (it holds: {listing})", fix)
    try:
        return archive.open(members[0])
    except _STREAM_ERRORS as err:
        raise DataFileError(archive_path, f"member {members[0].filename!r} cannot be read ({err})", fix) from err


# ---- the real files' names and pixel encoding: read by the data modules, written by datamodules.fixtures ----
ROTMNIST_ZIP = "mnist_rotation_new.zip"
ROTMNIST_TRAIN_VALID = "mnist_all_rotation_normalized_float_train_valid.amat"
ROTMNIST_TEST = "mnist_all_rotation_normalized_float_test.amat"
# the MNIST test split embedded in the package (RotMNIST-mini and the fixtures' digits)
EMBEDDED_MNIST_DIR = Path(__file__).resolve().parent / "assets" / "mnist"
# split name in this project -> split name in the PCam file names
PCAM_FILE_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def pcam_file_name(split: str, kind: str) -> str:
    """``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` for ``split`` in train/val/test."""
    return f"camelyonpatch_level_2_split_{PCAM_FILE_SPLITS[split]}_{kind}.h5"


def quantize_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 by rounding ``x * 255`` (so 1.0 -> 255 and 0.0 -> 0, exactly)."""
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
