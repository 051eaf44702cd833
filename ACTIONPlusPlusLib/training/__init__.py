"""Training stages, checkpoints and progress events."""

from .loop import CHECKPOINT_NAME, MODEL_NAME, TrainResult, Trainer, phases_for, train

__all__ = ["CHECKPOINT_NAME", "MODEL_NAME", "TrainResult", "Trainer", "phases_for", "train"]
