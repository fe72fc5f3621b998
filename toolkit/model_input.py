"""What a model is fed with: the normalisation and input size a checkpoint records and an ONNX
file's metadata carries, checked by one rule wherever they are read (files anyone can edit, or
flags). Free of torch, so ``rtk predict`` starts without it."""

from __future__ import annotations

import math

MIN_STD = 1e-3  # a smaller std scales pixels past float32's range: "nan%" results
MAX_SIDE = 8192  # a model input side larger than any image rtk predict decodes


def _three_numbers(values: object) -> list[float] | None:
    if not isinstance(values, list) or len(values) != 3:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    try:
        numbers = [float(v) for v in values]
    except OverflowError:  # an integer of hundreds of digits
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def normalization_ok(mean: object, std: object) -> bool:
    """Whether ``mean`` and ``std`` are 3 finite numbers each, every std at least ``MIN_STD``."""
    m, s = _three_numbers(mean), _three_numbers(std)
    return m is not None and s is not None and min(s) >= MIN_STD


def input_size_ok(size: object) -> bool:
    """Whether ``size`` is [channels, height, width]: 3 whole numbers in [1, ``MAX_SIDE``]."""
    return (
        isinstance(size, list)
        and len(size) == 3
        and all(type(d) is int and 0 < d <= MAX_SIDE for d in size)
    )
