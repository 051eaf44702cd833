"""The full training state in one file, written atomically (temp file + rename).

Student, teacher, heads (with their queues, centroids and allocation as buffers), optimiser, position
(phase, iteration), the RNG states of torch (CPU and CUDA) and of the trainer's own generators, and the
config.  A kill at any moment leaves the previous checkpoint intact.  Every checkpoint carries a
checksum of all its tensors (checksums.py), verified on load: a damaged checkpoint is refused naming
the file (older checkpoints without one still load), and so are NaN/Inf network weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checksums import CHECKSUM_KEY, checksum_problem, non_finite_tensors, tensor_checksum
from ..errors import ModelFileError
from ..io_utils import atomic_torch_save

CHECKPOINT_FORMAT = "actionpp-checkpoint"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    state = {"format": CHECKPOINT_FORMAT, "version": 1, **state}
    state[CHECKSUM_KEY] = tensor_checksum(state)
    return atomic_torch_save(state, Path(path))


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {path} does not exist: nothing to resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise ModelFileError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not an ACTION++ training checkpoint")
    problem = checksum_problem(state)
    if problem is not None:
        raise ModelFileError(f"checkpoint {path} is damaged: {problem}")
    bad = non_finite_tensors({k: state.get(k) for k in ("student", "teacher")})
    if bad:
        raise ModelFileError(f"checkpoint {path} is damaged: its network weights hold NaN/Inf values ({', '.join(bad)})")
    return state
