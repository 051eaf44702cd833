"""Read and write :class:`Case` images through SimpleITK, keeping spacing, origin and direction.

Arrays are in SimpleITK order (z, y, x); geometry is LPS, (x, y, z) (docs/ARCHITECTURE.md).  A 2D
image (or a 4D image whose last axis has size 1) is read as a one-slice 3D volume so that every Case is
(z, y, x).  Writes are atomic: the file is written under a temporary name with the same suffix in the
same folder (SimpleITK picks the format from the suffix) and renamed over the target.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

try:
    import SimpleITK as sitk
except ImportError:  # training from HDF5 needs no SimpleITK (a bare GPU server); image files do
    sitk = None  # type: ignore[assignment]

from ..errors import DataError
from ..io_utils import atomic_write
from .types import Case

#: File suffixes read and written by this module, longest first so that ``.seg.nrrd`` wins over ``.nrrd``.
IMAGE_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
#: Suffixes :func:`write_image` / :func:`write_label` accept.
WRITE_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES

_EXTENT_TOLERANCE_VOXELS = 0.5

#: Written into every prediction's header (NIfTI ``descrip``, NRRD/MHA key ``ITK_FileNotes``) so that a
#: later predict never segments our own outputs.
PREDICTION_NOTE = "ACTION++ prediction"
_NOTE_KEY = "ITK_FileNotes"


def split_suffix(name: str | Path) -> tuple[str, str]:
    """``"case1.nii.gz"`` -> ``("case1", ".nii.gz")``; ``("name", "")`` for an unknown suffix."""
    name = Path(name).name
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def has_image_suffix(path: str | Path) -> bool:
    return split_suffix(path)[1] != ""


# ---------------------------------------------------------------------------------------------------
# reading


# NIfTI datatype codes -> numpy dtypes of the voxels whose raw values can be NaN/Inf
_NIFTI_FLOATS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}  # float32, float64, complex64/128 (as pairs)


def _nifti_bytes(path: Path) -> bytes:
    """The whole (decompressed) NIfTI file; a DataError when a .gz stream is cut short or damaged.

    SimpleITK reads a truncated ``.nii.gz`` without complaint and fills the missing voxels with 0, so
    the stream is read to its end here: gzip checks the end-of-stream marker, the CRC and the length.
    """
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except EOFError as exc:
        raise DataError(f"{path}: is truncated (the compressed data ends before its end marker); "
                        "the file was probably cut off while copying or downloading") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: the compressed data is damaged ({exc})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _verify_nifti(path: Path) -> None:
    """Check a NIfTI file's raw voxels: as many as the header announces, and none NaN/Inf.

    The raw values are checked because SimpleITK's NIfTI reader turns NaN/Inf into 0, which would
    slip past every later check.
    """
    data = _nifti_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: is empty or truncated ({len(data)} bytes)")
    for order in ("<", ">"):
        size = struct.unpack(order + "i", data[:4])[0]
        if size in (348, 540):
            break
    else:
        return  # not a NIfTI header we know: leave it to SimpleITK
    if len(data) < size:
        raise DataError(f"{path}: is truncated ({len(data)} bytes, shorter than its {size}-byte header)")
    if size == 348:
        dims = struct.unpack(order + "8h", data[40:56])
        datatype, bitpix = struct.unpack(order + "hh", data[70:74])
        offset = int(struct.unpack(order + "f", data[108:112])[0]) or 352
    else:
        datatype, bitpix = struct.unpack(order + "hh", data[12:16])
        dims = struct.unpack(order + "8q", data[16:80])
        offset = int(struct.unpack(order + "q", data[168:176])[0]) or 544
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0:
        return
    count = int(np.prod([max(int(d), 1) for d in dims[1 : rank + 1]], dtype=np.int64))
    needed = offset + count * bitpix // 8
    if len(data) < needed:
        raise DataError(
            f"{path}: is truncated: it holds {len(data) - offset} bytes of voxel data but its header announces "
            f"{needed - offset} ({count} voxels); the file was probably cut off while copying")
    kind = _NIFTI_FLOATS.get(int(datatype))
    if kind is not None:
        values = np.frombuffer(data, dtype=np.dtype(order + kind), count=count * (2 if datatype in (32, 1792) else 1),
                               offset=offset)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise DataError(f"{path}: has {bad} NaN/Inf voxel value(s); fix or mask them before using the image")


def _require_sitk() -> None:
    if sitk is None:
        raise DataError("reading or writing .nii/.nrrd/.mha files needs SimpleITK, which is not installed: "
                        "pip install SimpleITK")


def _read_sitk(path: Path) -> sitk.Image:
    _require_sitk()
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    if split_suffix(path)[1].lower() in (".nii", ".nii.gz"):
        _verify_nifti(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(f"cannot read {path}: {first}") from exc


def _check_finite(array: np.ndarray, path: Path) -> None:
    """NaN/Inf in any format, before normalisation (min-max of an image with one NaN is all zeros)."""
    if np.issubdtype(array.dtype, np.floating) or np.iscomplexobj(array):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{path}: has {bad} NaN/Inf voxel value(s); fix or mask them before using the image")


def is_prediction_file(path: str | Path) -> bool:
    """True when the file's header carries :data:`PREDICTION_NOTE` (a segmentation we wrote)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    for key in (_NOTE_KEY, "descrip"):
        if reader.HasMetaDataKey(key) and reader.GetMetaData(key).strip().startswith(PREDICTION_NOTE):
            return True
    return False


def _as_scalar_3d(image: sitk.Image, path: Path) -> sitk.Image:
    """A scalar 3D image, or a DataError naming ``path`` for multi-channel / 4D / 1D data."""
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise DataError(
            f"{path}: has {components} channels per pixel (e.g. RGB or a vector image); "
            "only single-channel grayscale images are supported"
        )
    dim = image.GetDimension()
    if dim == 4:
        size = list(image.GetSize())
        if size[3] != 1:
            raise DataError(
                f"{path}: is a 4D image (size {tuple(size)}); only 2D or 3D images are supported, "
                "extract one frame/channel first"
            )
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
        dim = 3
    if dim == 2:
        image = sitk.JoinSeries(image)  # (x, y) -> (x, y, 1): direction embedded, z spacing 1
        dim = 3
    if dim != 3:
        raise DataError(f"{path}: is a {dim}D image; only 2D or 3D images are supported")
    return image


def _geometry_equal(a: sitk.Image, b: sitk.Image) -> bool:
    if a.GetSize() != b.GetSize():
        return False
    spacing_a = np.asarray(a.GetSpacing())
    if not np.allclose(spacing_a, b.GetSpacing(), rtol=1e-5, atol=1e-6):
        return False
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5):
        return False
    return bool(np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3 * float(spacing_a.min()) + 1e-6))


def _extent_in_index_space(moving: sitk.Image, reference: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box, in ``reference``'s continuous index space, of ``moving``'s voxel-edge corners."""
    size = np.asarray(moving.GetSize(), dtype=float)
    corners = []
    for bits in range(8):
        idx = [(-0.5 if (bits >> k) & 1 == 0 else size[k] - 0.5) for k in range(3)]
        point = moving.TransformContinuousIndexToPhysicalPoint(idx)
        corners.append(reference.TransformPhysicalPointToContinuousIndex(point))
    arr = np.asarray(corners)
    return arr.min(axis=0), arr.max(axis=0)


def _check_integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise DataError(f"label file {path}: contains NaN/Inf values")
        if not np.array_equal(array, np.round(array)):
            raise DataError(
                f"label file {path}: has non-integer values (pixel type {array.dtype}); "
                "a label map must hold integer class indices"
            )
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    if lo < 0 or hi > 255:
        raise DataError(f"label file {path}: values must be class indices in 0..255, found range {lo}..{hi}")
    return array.astype(np.uint8)


def _label_on_image_grid(label: sitk.Image, image: sitk.Image, label_path: Path, image_path: Path) -> sitk.Image:
    if _geometry_equal(label, image):
        label = sitk.Image(label)
        label.CopyInformation(image)  # absorb float rounding (e.g. NIfTI float32 qform vs sform)
        return label
    lo, hi = _extent_in_index_space(label, image)
    size = np.asarray(image.GetSize(), dtype=float)
    tol = _EXTENT_TOLERANCE_VOXELS + 1e-6
    if np.all(np.abs(lo + 0.5) <= tol) and np.all(np.abs(hi - (size - 0.5)) <= tol):
        return sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    raise DataError(
        f"label {label_path} does not cover the same physical region as image {image_path}: "
        f"label size {label.GetSize()} spacing {_fmt(label.GetSpacing())} origin {_fmt(label.GetOrigin())} vs "
        f"image size {image.GetSize()} spacing {_fmt(image.GetSpacing())} origin {_fmt(image.GetOrigin())} "
        "(a label on another grid is only resampled when both span the same extent within half a voxel)"
    )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def read_case(path: str | Path, case_id: str | None = None, label_path: str | Path | None = None) -> Case:
    """Read an image (and optional label map) into a Case with its geometry.

    The image becomes float32 (z, y, x).  A label on a different grid is resampled (nearest neighbour)
    onto the image grid when both span the same physical extent within half an image voxel; otherwise a
    DataError names both files.  Label values must be integers in 0..255 (cast to uint8).
    """
    path = Path(path)
    image = _as_scalar_3d(_read_sitk(path), path)
    array = sitk.GetArrayFromImage(image)
    if np.iscomplexobj(array):
        raise DataError(f"{path}: has complex pixels; only real-valued images are supported")
    _check_finite(array, path)
    label_array = None
    if label_path is not None:
        label_path = Path(label_path)
        label = _as_scalar_3d(_read_sitk(label_path), label_path)
        checked = _check_integer_labels(sitk.GetArrayFromImage(label), label_path)
        label = _with_array(checked, label)
        label = _label_on_image_grid(label, image, label_path, path)
        label_array = np.ascontiguousarray(sitk.GetArrayFromImage(label).astype(np.uint8, copy=False))
    return Case(
        id=case_id if case_id is not None else split_suffix(path)[0],
        image=np.ascontiguousarray(array.astype(np.float32, copy=False)),
        label=label_array,
        spacing=tuple(float(v) for v in image.GetSpacing()),
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        path=path,
    )


def _with_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(like)
    return out


# ---------------------------------------------------------------------------------------------------
# writing


def to_sitk(array: np.ndarray, like: Case | None = None) -> sitk.Image:
    """A (z, y, x) array as a SimpleITK image carrying ``like``'s geometry (unit/identity when None)."""
    _require_sitk()
    array = np.asarray(array)
    if array.ndim != 3:
        raise DataError(f"expected a (z, y, x) array, got shape {array.shape}")
    if like is not None and tuple(array.shape) != tuple(like.image.shape):
        raise DataError(
            f"array shape {array.shape} does not match case {like.id!r} image shape {tuple(like.image.shape)}"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if like is not None:
        if like.spacing is not None:
            image.SetSpacing([float(v) for v in like.spacing])
        if like.origin is not None:
            image.SetOrigin([float(v) for v in like.origin])
        if like.direction is not None:
            image.SetDirection([float(v) for v in like.direction])
    return image


def _write_sitk(image: sitk.Image, path: Path, note: str | None = None) -> Path:
    path = Path(path)
    if note is not None:
        image.SetMetaData(_NOTE_KEY, note)  # NIfTI: descrip (80 chars), NRRD/MHA: a header field
    stem, suffix = split_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise DataError(f"cannot write {path}: use one of {', '.join(WRITE_SUFFIXES)}")
    compress = suffix != ".nii"

    def write(tmp: Path) -> None:
        # SimpleITK chooses the writer from the suffix, so write beside the temp file with the real
        # suffix and move that onto the temp name atomic_write then fsyncs and renames into place.
        sibling = tmp.with_name(tmp.name + suffix)
        try:
            sitk.WriteImage(image, str(sibling), compress)
            os.replace(sibling, tmp)
        finally:
            sibling.unlink(missing_ok=True)

    return atomic_write(path, write)


def write_image(path: str | Path, array: np.ndarray, like: Case | None, note: str | None = None) -> Path:
    """Write a (z, y, x) image (float32 unless it is an integer array) with ``like``'s geometry.

    ``note`` goes into the header (:data:`PREDICTION_NOTE` marks our outputs)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32, copy=False)
    return _write_sitk(to_sitk(array, like), Path(path), note)


def write_label(path: str | Path, labels: np.ndarray, like: Case | None, note: str | None = None) -> Path:
    """Write a (z, y, x) uint8 label map with ``like``'s geometry (NIfTI, NRRD or MHA by suffix)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        labels = _check_integer_labels(labels, Path(path))
    return _write_sitk(to_sitk(labels, like), Path(path), note)
