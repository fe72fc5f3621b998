"""Training: the paper's recipes, resumable runs, run directories and checkpoints."""

from toolkit.config import RECIPES, ConfigError, TrainConfig, check_dataset, make_config
from toolkit.training.checkpoint import (
    CheckpointError,
    initial_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from toolkit.training.device import keep_freed_memory, resolve_device
from toolkit.training.engine import (
    NonFiniteLossError,
    Observer,
    Trainer,
    TrainingInterrupted,
    evaluate,
)
from toolkit.training.group import SeedGroup, SeedGroupError, open_run, rerun_on_interrupt
from toolkit.training.records import EpochRecord, TrainResult
from toolkit.training.rundir import (
    RunDir,
    RunDirError,
    default_run_name,
    resume_config,
    trained_precision,
)

__all__ = [
    "RECIPES",
    "CheckpointError",
    "ConfigError",
    "EpochRecord",
    "NonFiniteLossError",
    "Observer",
    "RunDir",
    "RunDirError",
    "SeedGroup",
    "SeedGroupError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "check_dataset",
    "default_run_name",
    "evaluate",
    "initial_checkpoint",
    "keep_freed_memory",
    "load_checkpoint",
    "make_config",
    "model_from_checkpoint",
    "open_run",
    "rerun_on_interrupt",
    "resolve_device",
    "resume_config",
    "save_checkpoint",
    "trained_precision",
]
