"""Data layer: Case type, loaders for the ACDC / LA benchmarks and the generic NIfTI/NRRD layout,
validation before training, SimpleITK I/O keeping geometry, and synthetic phantoms."""

from .benchmarks import acdc_patient, acdc_split_names, load_acdc, load_la
from .generic import load_generic
from .imageio import IMAGE_SUFFIXES, read_case, split_suffix, to_sitk, write_image, write_label
from .layout import LAYOUTS, SPLITS, detect_layout, load_dataset
from .phantoms import (
    atrium_phantom_case,
    atrium_phantom_dataset,
    cardiac_phantom_case,
    cardiac_phantom_dataset,
    write_generic_layout,
)
from .types import Case, Dataset, from_network_order, normalize, to_network_order
from .validation import validate_labeled_count, validate_training_cases

__all__ = [
    "Case",
    "Dataset",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "SPLITS",
    "acdc_patient",
    "acdc_split_names",
    "atrium_phantom_case",
    "atrium_phantom_dataset",
    "cardiac_phantom_case",
    "cardiac_phantom_dataset",
    "detect_layout",
    "from_network_order",
    "load_acdc",
    "load_dataset",
    "load_generic",
    "load_la",
    "normalize",
    "read_case",
    "split_suffix",
    "to_network_order",
    "to_sitk",
    "validate_labeled_count",
    "validate_training_cases",
    "write_generic_layout",
    "write_image",
    "write_label",
]
