"""Training: the paper's recipes, resumable runs, run directories and checkpoints."""

from toolkit.training.checkpoint import (
    CheckpointError,
    initial_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from toolkit.training.config import (
    RECIPES,
    ConfigError,
    TrainConfig,
    check_dataset,
    make_config,
)
from toolkit.training.engine import (
    EpochRecord,
    NonFiniteLossError,
    Observer,
    Trainer,
    TrainingInterrupted,
    TrainResult,
    evaluate,
    resolve_device,
    resume_config,
)
from toolkit.training.rundir import RunDir, RunDirError, default_run_name

__all__ = [
    "RECIPES",
    "CheckpointError",
    "ConfigError",
    "EpochRecord",
    "NonFiniteLossError",
    "Observer",
    "RunDir",
    "RunDirError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "check_dataset",
    "default_run_name",
    "evaluate",
    "initial_checkpoint",
    "load_checkpoint",
    "make_config",
    "model_from_checkpoint",
    "resolve_device",
    "resume_config",
    "save_checkpoint",
]
