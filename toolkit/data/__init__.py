"""CIFAR-10 for rtk: locate, decode once, cache, split, and iterate as device tensors."""

from toolkit.data.dataset import (
    DataInfo,
    describe,
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_SIZE,
    Dataset,
    Split,
    default_cache_dir,
    load_dataset,
)
from toolkit.data.loader import TensorLoader, epoch_generator
from toolkit.data.sources import DataSource
from toolkit.data.transforms import MEAN, PAPER_AUGMENT, STD, Augment, augment, normalize

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_VAL_SIZE",
    "MEAN",
    "PAPER_AUGMENT",
    "STD",
    "Augment",
    "DataSource",
    "DataInfo",
    "Dataset",
    "Split",
    "TensorLoader",
    "augment",
    "default_cache_dir",
    "describe",
    "epoch_generator",
    "load_dataset",
    "normalize",
]
