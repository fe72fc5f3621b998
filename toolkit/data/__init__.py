"""The dataset for rtk (CIFAR-10 or any ImageFolder tree): locate, decode once, cache, split,
and iterate as device tensors."""

from toolkit.data.dataset import (
    CacheCleanup,
    DataInfo,
    Dataset,
    Split,
    check_fits,
    clear_cache,
    default_cache_dir,
    describe,
    load_dataset,
)
from toolkit.data.loader import TensorLoader, epoch_generator
from toolkit.data.sources import DataSource
from toolkit.data.transforms import (
    MEAN,
    PAPER_AUGMENT,
    PAPER_NORMALIZATION,
    STD,
    Augment,
    Normalization,
    augment,
    measure_normalization,
    normalize,
)

__all__ = [
    "MEAN",
    "PAPER_AUGMENT",
    "PAPER_NORMALIZATION",
    "STD",
    "Augment",
    "CacheCleanup",
    "DataInfo",
    "DataSource",
    "Dataset",
    "Normalization",
    "Split",
    "TensorLoader",
    "augment",
    "check_fits",
    "clear_cache",
    "default_cache_dir",
    "describe",
    "epoch_generator",
    "load_dataset",
    "measure_normalization",
    "normalize",
]
