"""CIFAR-10 for rtk: locate, decode once, cache, split, and iterate as device tensors."""

from toolkit.data.dataset import (
    CacheCleanup,
    DataInfo,
    Dataset,
    Split,
    clear_cache,
    default_cache_dir,
    describe,
    load_dataset,
)
from toolkit.data.loader import TensorLoader, epoch_generator
from toolkit.data.sources import DataSource
from toolkit.data.transforms import MEAN, PAPER_AUGMENT, STD, Augment, augment, normalize

__all__ = [
    "MEAN",
    "PAPER_AUGMENT",
    "STD",
    "Augment",
    "CacheCleanup",
    "DataInfo",
    "DataSource",
    "Dataset",
    "Split",
    "TensorLoader",
    "augment",
    "clear_cache",
    "default_cache_dir",
    "describe",
    "epoch_generator",
    "load_dataset",
    "normalize",
]
