"""Node <-> file through MRML storage nodes (.nrrd, .nii, .nii.gz, .mha, .seg.nrrd).

Storage nodes behave the same in the Slicer application and in the ``slicer-core`` wheel, unlike
``slicer.util.loadVolume`` / ``saveNode`` (which need ``slicer.app``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .geometry import node_label


def _storage_messages(storage: Any) -> str:
    messages = storage.GetUserMessages() if hasattr(storage, "GetUserMessages") else None
    text = messages.GetAllMessagesAsString() if messages is not None else ""
    return text.strip() or "no details were reported"


def _read_new_node(scene: Any, path: str | Path, node_class: str, storage_class: str, what: str,
                   name: str | None, needs_image: bool) -> Any:
    """A NEW ``node_class`` node read from ``path`` through a ``storage_class`` node; on failure both are
    removed again and DataError carries the reader's messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    from ..data.imageio import split_suffix

    node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name or split_suffix(path)[0]))
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    if not ok or (needs_image and node.GetImageData() is None):
        message = _storage_messages(storage)
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise DataError(f"cannot read {what} {path}: {message}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def load_volume_file(scene: Any, path: str | Path, name: str | None = None, *, labelmap: bool = False) -> Any:
    """Read an image file (.nrrd, .nii, .nii.gz, .mha) into a NEW volume node through a storage node.

    Slicer's reader flips the slice axis of left-handed files (same physical place): always go through
    the geometry.  DataError with the reader's messages when the file cannot be read.
    """
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    return _read_new_node(scene, path, cls, "vtkMRMLVolumeArchetypeStorageNode", "volume", name, needs_image=True)


def load_segmentation_file(scene: Any, path: str | Path, name: str | None = None) -> Any:
    """Read a ``.seg.nrrd`` into a NEW segmentation node through a vtkMRMLSegmentationStorageNode."""
    return _read_new_node(scene, path, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode",
                          "segmentation", name, needs_image=False)


def load_label_file(scene: Any, path: str | Path, name: str | None = None) -> Any:
    """``.seg.nrrd`` -> segmentation node; any other image file -> labelmap volume node."""
    if str(path).lower().endswith(".seg.nrrd"):
        return load_segmentation_file(scene, path, name)
    return load_volume_file(scene, path, name, labelmap=True)


def save_node(node: Any, path: str | Path) -> Path:
    """Write a segmentation (.seg.nrrd) or volume node through a storage node attached to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = node.GetScene()
    if node.IsA("vtkMRMLSegmentationNode"):
        if not path.name.lower().endswith(".seg.nrrd"):
            raise DataError(f"segmentations are saved as .seg.nrrd, not {path.name}")
        cls = "vtkMRMLSegmentationStorageNode"
    else:
        cls = "vtkMRMLVolumeArchetypeStorageNode"
    storage = node.GetStorageNode()
    if storage is None or not storage.IsA(cls):
        storage = scene.AddNewNodeByClass(cls)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    ok = storage.WriteData(node)
    if not ok or not path.is_file():
        raise DataError(f"cannot write {node_label(node)} to {path}: {_storage_messages(storage)}")
    return path
