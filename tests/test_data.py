from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, TinyData
from toolkit.data import Augment, TensorLoader, augment, load_dataset, normalize
from toolkit.data.sources import detect, locate
from toolkit.errors import DataError

N_TRAIN = TRAIN_PER_CLASS * len(CLASSES)
N_TEST = TEST_PER_CLASS * len(CLASSES)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


# --- reading each format ----------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["imagefolder", "cifar_python", "cifar_tarball"])
def test_each_format_reads_the_same_images(fixture: str, request, tiny_data: TinyData):
    path = request.getfixturevalue(fixture)
    dataset = load_dataset(path)
    assert dataset.classes == CLASSES
    assert dataset.train.images.shape == (N_TRAIN, 3, 32, 32)
    assert dataset.train.images.dtype == torch.uint8
    assert dataset.test.images.shape == (N_TEST, 3, 32, 32)
    assert torch.equal(dataset.train.labels, torch.from_numpy(tiny_data.train_labels))
    assert torch.equal(dataset.test.labels, torch.from_numpy(tiny_data.test_labels))
    # Every format decodes to the same pixels (the fixture decoded the JPEGs with Pillow).
    diff = (dataset.train.images.int() - _nchw(tiny_data.train_images).int()).abs()
    assert diff.max() <= 1  # libjpeg-turbo and Pillow may round an IDCT differently


def test_format_detection(imagefolder: Path, cifar_python: Path, cifar_tarball: Path):
    assert detect(imagefolder).format == "imagefolder"
    assert detect(cifar_python).format == "cifar-python"
    assert detect(cifar_python.parent).format == "cifar-python"  # the folder holding it
    assert detect(cifar_tarball).format == "cifar-tar"


def test_lookup_order(tmp_path: Path, imagefolder: Path, cifar_python: Path):
    local = tmp_path / "project"
    (local / "data").mkdir(parents=True)
    write_marker = cifar_python.parent  # holds cifar-10-batches-py/
    env = {"RTK_DATA": str(write_marker)}
    assert locate(imagefolder, env=env, cwd=local).format == "imagefolder"  # --data first
    assert locate(None, env=env, cwd=local).format == "cifar-python"  # then RTK_DATA
    os.symlink(imagefolder / "train", local / "data" / "train")
    os.symlink(imagefolder / "test", local / "data" / "test")
    assert locate(None, env={}, cwd=local).path == (local / "data").resolve()  # then ./data


# --- the train/validation split ----------------------------------------------------------


def test_split_is_stratified_seeded_and_disjoint(imagefolder: Path):
    dataset = load_dataset(imagefolder)
    train, val = dataset.split(val_size=50, seed=1)
    assert (len(train), len(val)) == (N_TRAIN - 50, 50)
    assert val.class_counts(10) == [5] * 10
    again_train, again_val = dataset.split(val_size=50, seed=1)
    assert torch.equal(val.images, again_val.images) and torch.equal(
        train.images, again_train.images
    )
    _, other_val = dataset.split(val_size=50, seed=2)
    assert not torch.equal(val.images, other_val.images)
    # Disjoint and complete: together they are the training set, each image once.
    both = torch.cat([train.images, val.images]).flatten(1)
    assert len(torch.unique(both, dim=0)) == len(
        torch.unique(dataset.train.images.flatten(1), dim=0)
    )


def test_validation_size_out_of_range(imagefolder: Path):
    with pytest.raises(DataError, match="validation size"):
        load_dataset(imagefolder).split(val_size=N_TRAIN, seed=0)


# --- the cache ---------------------------------------------------------------------------


def test_cache_is_reused_then_rebuilt_when_the_source_changes(imagefolder: Path):
    first = load_dataset(imagefolder)
    assert not first.from_cache and first.cache_path is not None and first.cache_path.is_file()
    second = load_dataset(imagefolder)
    assert second.from_cache and second.cache_path == first.cache_path
    assert torch.equal(second.train.images, first.train.images)
    # Replace one image with a different one: the cache must notice and rebuild.
    victim = next((imagefolder / "train" / "cat").iterdir())
    replacement = np.full((32, 32, 3), 7, dtype=np.uint8)
    Image.fromarray(replacement).save(victim, format="JPEG", quality=100)
    third = load_dataset(imagefolder)
    assert not third.from_cache
    assert not torch.equal(third.train.images, first.train.images)
    assert load_dataset(imagefolder).from_cache


def test_truncated_cache_file_is_rebuilt(imagefolder: Path):
    cache = load_dataset(imagefolder).cache_path
    assert cache is not None
    cache.write_bytes(cache.read_bytes()[:1000])
    again = load_dataset(imagefolder)
    assert not again.from_cache and again.train.images.shape == (N_TRAIN, 3, 32, 32)


def test_failure_writes_nothing_to_the_cache(imagefolder: Path):
    (imagefolder / "test" / "dog" / "0000.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError):
        load_dataset(imagefolder)
    assert list(Path(os.environ["RTK_CACHE_DIR"]).iterdir()) == []


# --- bad input: one clear error each -----------------------------------------------------


def _first_image(root: Path, split: str = "train") -> Path:
    return sorted((root / split / "bird").iterdir())[0]


def test_missing_path(tmp_path: Path):
    with pytest.raises(DataError, match=r"does not exist.*--data or RTK_DATA"):
        load_dataset(tmp_path / "nowhere")


def test_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "empty")


def test_wrong_layout(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="does not look like CIFAR-10; expected train/ and test/"):
        load_dataset(tmp_path / "photos")


def test_train_and_test_classes_differ(imagefolder: Path):
    (imagefolder / "test" / "truck").rename(imagefolder / "test" / "lorry")
    with pytest.raises(DataError, match=r"different classes.*truck.*lorry"):
        load_dataset(imagefolder)


def test_image_of_another_size_is_named_unless_every_image_is_resized(imagefolder: Path):
    bad = _first_image(imagefolder, "test")
    Image.new("RGB", (64, 48), "red").save(bad, format="PNG")
    with pytest.raises(DataError, match=rf"{bad} is 64x48 but the first training image is 32x32"):
        load_dataset(imagefolder)
    resized = load_dataset(imagefolder, image_size=24)
    assert resized.input_size == [3, 24, 24] and resized.image_size == 24
    assert tuple(resized.train.images.shape[1:]) == (3, 24, 24)
    # The red image, shrunk with the rest: still red.
    position = sorted(p.name for p in bad.parent.iterdir()).index(bad.name)
    start = list(resized.classes).index(bad.parent.name) * 5  # 5 test images per class
    red = resized.test.images[start + position]
    assert red[0].min() == 255 and red[1:].max() == 0
    # Each size is its own cache: the stored size's is not overwritten by a resized one.
    assert load_dataset(imagefolder, image_size=24).from_cache


def test_greyscale_images_become_rgb_and_are_recorded(imagefolder: Path):
    bad = _first_image(imagefolder, "test")
    Image.new("L", (32, 32), 128).save(bad, format="PNG")
    # 16-bit greyscale (medical, scientific images): its top 8 bits, not a clipped copy.
    deep = _first_image(imagefolder, "train")
    Image.fromarray(np.full((32, 32), 0x4A00, dtype=np.uint16)).save(deep, format="PNG")
    dataset = load_dataset(imagefolder)
    assert dataset.converted == ("I;16", "L")
    assert not dataset.is_cifar10  # not CIFAR-10 as stored any more: its own normalisation
    grey = dataset.test.images[(dataset.test.images == 128).flatten(1).all(1)]
    assert len(grey) == 1  # every channel 128
    assert len(dataset.train.images[(dataset.train.images == 0x4A).flatten(1).all(1)]) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named(imagefolder: Path, damage: str):
    bad = _first_image(imagefolder)
    content = bad.read_bytes()
    bad.write_bytes(b"\x00" * 64 if damage == "garbage" else content[: len(content) // 3])
    with pytest.raises(DataError, match=rf"cannot decode image {bad}"):
        load_dataset(imagefolder)


def test_unreadable_image_is_named(imagefolder: Path):
    bad = _first_image(imagefolder)
    bad.unlink()
    bad.symlink_to(imagefolder / "gone.jpg")  # a dangling link: unreadable, even for root
    with pytest.raises(DataError, match=rf"cannot read {bad}"):
        load_dataset(imagefolder)


def test_class_folder_without_images(imagefolder: Path):
    for image in (imagefolder / "train" / "frog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"frog holds no images"):
        load_dataset(imagefolder)


def test_corrupt_official_batch(cifar_python: Path):
    (cifar_python / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(cifar_python)


def test_official_batch_refuses_code_execution(cifar_python: Path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with (cifar_python / "data_batch_2").open("wb") as handle:
        pickle.dump({b"data": Exploit()}, handle)
    with pytest.raises(DataError, match=r"data_batch_2.*refusing to load posix.system"):
        load_dataset(cifar_python)


# --- augmentation ------------------------------------------------------------------------


def _asymmetric_batch(n: int) -> torch.Tensor:
    """Mid-grey images with a bright left edge: a flip moves the edge, brightness never clips."""
    images = torch.full((n, 3, 32, 32), 128, dtype=torch.uint8)
    images[..., 0] = 200
    return images


def test_flip_rate_is_one_half():
    images = _asymmetric_batch(20_000)
    out = augment(images, Augment(flip=True, brightness=0), torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, -1] > out[:, 0, 0, 0]).float().mean().item()
    assert abs(flipped - 0.5) < 0.015  # 20,000 draws: 4.2 standard deviations


def test_brightness_delta_within_bounds_and_uniform_per_image():
    images = _asymmetric_batch(20_000)
    out = augment(images, Augment(flip=False, brightness=0.1), torch.Generator().manual_seed(0))
    delta = out - images.float() / 255
    per_image = delta[:, :, :, 1:].flatten(1)
    assert torch.allclose(per_image.max(1).values, per_image.min(1).values, atol=1e-6)
    assert per_image.abs().max() <= 0.1 + 1e-6
    assert per_image[:, 0].abs().max() > 0.099  # the whole range is used
    assert abs(per_image[:, 0].mean().item()) < 0.002


def test_normalized_output_stays_in_range():
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
    out = normalize(augment(images, Augment(), torch.Generator().manual_seed(0)))
    assert out.min() >= -1 and out.max() <= 1
    assert out.min() == -1 and out.max() == 1  # clamping reaches the ends
    ends = torch.tensor([0, 128, 255], dtype=torch.uint8).repeat(3).view(1, 3, 1, 3)
    expected = torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]).repeat(3).view(1, 3, 1, 3)
    torch.testing.assert_close(normalize(ends), expected)


def test_augmentation_is_deterministic_for_a_seed():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    spec = Augment(flip=True, brightness=0.1, translate=4)
    a = augment(images, spec, torch.Generator().manual_seed(3))
    b = augment(images, spec, torch.Generator().manual_seed(3))
    c = augment(images, spec, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_translate_shifts_each_image_within_the_range():
    images = torch.zeros((1000, 1, 32, 32), dtype=torch.uint8)
    images[:, 0, 16, 16] = 255
    spec = Augment(flip=False, brightness=0, translate=2)
    out = augment(images, spec, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.all(out.flatten(1).sum(1) == 1)  # the dot moved, nothing else appeared
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    shifts = set(zip((rows - 16).tolist(), (cols - 16).tolist(), strict=True))
    assert shifts == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


# --- the tensor loader -------------------------------------------------------------------


def test_loader_epoch_covers_every_image_once_in_a_seeded_order(imagefolder: Path):
    train, _ = load_dataset(imagefolder).split(val_size=50, seed=0)
    loader = TensorLoader(train, batch_size=32, shuffle=True, augment=None, seed=5)
    assert len(loader) == -(-len(train) // 32)
    epoch0 = [y for _, y in loader]
    epoch1 = [y for _, y in loader]
    labels0, labels1 = torch.cat(epoch0), torch.cat(epoch1)
    assert sorted(labels0.tolist()) == sorted(train.labels.tolist())
    assert not torch.equal(labels0, labels1)  # a new order each epoch
    loader.set_epoch(0)  # replaying an epoch (resume) gives the same batches
    assert torch.equal(torch.cat([y for _, y in loader]), labels0)
    x, _ = next(iter(TensorLoader(train, batch_size=8)))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    torch.testing.assert_close(x, normalize(train.images[:8]))


def test_loader_drop_last_and_channels_last(imagefolder: Path):
    train = load_dataset(imagefolder).train
    loader = TensorLoader(train, batch_size=64, drop_last=True, channels_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == N_TRAIN // 64
    assert all(x.shape[0] == 64 for x, _ in batches)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
