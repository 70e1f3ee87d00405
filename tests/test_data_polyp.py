"""Polyp image/mask folders: pairing, every bad input named, the three splits, transforms, real layouts."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from gpfuse.data.polyp import (
    PolypDataset,
    SegItem,
    check_items,
    hold_out,
    list_folder,
    make_split,
    read_mask,
    seg_collate,
)
from gpfuse.data.seg_transforms import SegTransform
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder


@pytest.fixture
def folder(tmp_path):
    return write_synthetic_polyp_folder(tmp_path / "polyps", n_images=12, size=32, per_sequence=3)


def test_pairs_by_stem_with_groups_from_the_index(folder):
    items = list_folder(folder)
    assert len(items) == 12 and items[0].name == "001" and items[0].mask.endswith("masks/001.png")
    assert [it.group for it in items[:4]] == ["1", "1", "1", "2"]
    kept, counts = check_items(items)
    assert len(kept) == 12 and counts == {"skipped": 0, "binarized": 0}
    mask = read_mask(items[0].mask)
    assert mask.dtype == bool and mask.shape == (32, 32) and 0 < mask.mean() < 1


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match=r"empty/images: no images"):
        list_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        list_folder(tmp_path / "nowhere")
    (tmp_path / "nomasks" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no mask folder"):
        list_folder(tmp_path / "nomasks")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_mask", "image without a mask"),
        ("unreadable", "unreadable image"),
        ("wrong_size", "mask size 20x32 differs from its image's 32x32"),
    ],
)
def test_each_bad_pair_is_named_raised_or_skipped_with_a_count(folder, damage, message, caplog):
    if damage == "no_mask":
        (folder / "masks" / "005.png").unlink()
    elif damage == "unreadable":
        (folder / "images" / "005.jpg").write_bytes(b"not a jpeg")
    else:
        Image.fromarray(np.zeros((32, 20), dtype=np.uint8)).save(folder / "masks" / "005.png")
    items = list_folder(folder)
    with pytest.raises(ValueError, match=message) as err:
        check_items(items, what="train")
    assert "005" in str(err.value) and "train: 1 unusable" in str(err.value)
    with caplog.at_level(logging.WARNING):
        kept, counts = check_items(items, on_bad_file="skip")
    assert len(kept) == 11 and counts["skipped"] == 1 and "005" not in [it.name for it in kept]
    assert "skipped 1 unusable" in caplog.text and "005" in caplog.text


def test_non_binary_masks_by_policy(folder, caplog):
    soft = np.asarray(Image.open(folder / "masks" / "002.png")).copy()
    soft[soft == 255] = 200  # JPEG-like values: still foreground after thresholding at 128
    soft[0, 0] = 60
    Image.fromarray(soft).save(folder / "masks" / "002.png")
    items = list_folder(folder)
    with caplog.at_level(logging.WARNING):
        kept, counts = check_items(items)
    assert len(kept) == 12 and counts["binarized"] == 1 and "binarised at 128" in caplog.text
    assert read_mask(items[1].mask).sum() == (soft >= 128).sum() and not read_mask(items[1].mask)[0, 0]
    with pytest.raises(ValueError, match=r"(?s)1 non-binary masks.*masks/002.png"):
        check_items(items, nonbinary_mask="raise")
    kept, counts = check_items(items, nonbinary_mask="skip")
    assert len(kept) == 11 and counts["skipped"] == 1
    zero_one = (np.asarray(Image.open(folder / "masks" / "003.png")) > 0).astype(np.uint8)  # a 0/1 mask
    Image.fromarray(zero_one).save(folder / "masks" / "003.png")
    assert read_mask(folder / "masks" / "003.png").sum() == zero_one.sum()


def test_random_and_grouped_hold_out(folder):
    items = list_folder(folder)
    rest, held = hold_out(items, 0.25, 0, by_group=False)
    assert len(held) == 3 and len(rest) == 9 and not {it.image for it in held} & {it.image for it in rest}
    rest, held = hold_out(items, 0.25, 0, by_group=True)  # 4 sequences of 3: one whole sequence
    assert len({it.group for it in held}) == 1 and not {it.group for it in held} & {it.group for it in rest}
    assert hold_out(items, 0.25, 0, by_group=True) == (rest, held)  # seeded
    with pytest.raises(ValueError, match="needs a group for every image"):
        hold_out([it._replace(group="") for it in items], 0.25, 0, by_group=True)


def test_make_split_never_lets_validation_touch_a_test_set(folder):
    items = list_folder(folder)
    split = make_split(items, [], {}, "group", 0.25, 0.34, seed=3)
    groups = {
        name: {it.group for it in part}
        for name, part in (("train", split.train), ("val", split.val), ("test", split.test["held_out"]))
    }
    assert groups["train"].isdisjoint(groups["val"]) and groups["train"].isdisjoint(groups["test"])
    assert (
        groups["val"].isdisjoint(groups["test"])
        and len(split.train) + len(split.val) + len(split.test["held_out"]) == 12
    )
    given = make_split(items[:8], items[8:10], {"other": items[10:]}, "given", 0.2, 0.1, seed=0)
    assert len(given.train) == 8 and len(given.val) == 2 and list(given.test) == ["other"]
    with pytest.raises(ValueError, match="no test set"):
        make_split(items, [], {}, "given", 0.2, 0.1, seed=0)


def test_transform_keeps_image_and_mask_aligned():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:, :20] = 255  # white left half
    mask = np.zeros((40, 40), dtype=bool)
    mask[:, :20] = True  # the mask covers the white half
    g = torch.Generator().manual_seed(0)
    tf = SegTransform(32, train=True, rotate=30, jitter=0.0, mean=(0, 0, 0), std=(1, 1, 1), generator=g)
    for _ in range(5):
        x, y = tf(Image.fromarray(image), mask)
        assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}
        inside, outside = x[0][y[0] > 0.5], x[0][y[0] < 0.5]
        assert inside.mean() > 0.9 and (outside < 0.5).float().mean() > 0.9  # white under the mask only
    x, y = SegTransform(32)(Image.fromarray(image), mask)  # eval: resize + ImageNet normalisation only
    assert y[0, :, :16].all() and not y[0, :, 16:].any()
    torch.testing.assert_close(
        x[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )
    with pytest.raises(ValueError, match="flip_p"):
        SegTransform(32, scale=(1.2, 1.0))


def test_dataset_and_collate_keep_each_images_own_size(folder):
    items = list_folder(folder)
    big = folder / "images" / "001.jpg"
    Image.open(big).resize((48, 40)).save(big)
    Image.open(items[0].mask).resize((48, 40), Image.Resampling.NEAREST).save(items[0].mask)
    dataset = PolypDataset(items[:2], SegTransform(32), full_masks=True)
    batch = seg_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    assert batch["size"] == [(40, 48), (32, 32)] and batch["mask_full"][0].shape == (40, 48)
    assert batch["name"] == ["001", "002"]


def test_prediction_folder_without_masks(tmp_path, folder):
    plain = tmp_path / "plain"
    shutil.copytree(folder / "images", plain)
    items = list_folder(plain, masks=False)
    assert len(items) == 12 and all(it.mask is None for it in items)
    sample = PolypDataset(items, SegTransform(32))[0]
    assert sample["mask"].sum() == 0 and sample["size"] == (32, 32)


def test_real_shared_layouts_read_and_group():
    kvasir, clinic = SHARED_DATA / "kvasir-seg", SHARED_DATA / "cvc-clinicdb"
    if not (kvasir / "val" / "images").is_dir() or not (clinic / "test" / "images").is_dir():
        pytest.skip(f"Kvasir-SEG / CVC-ClinicDB not found under {SHARED_DATA} (set GPFUSE_DATA)")
    val = list_folder(kvasir / "val")
    assert len(val) == 100 and all(it.mask and it.name.startswith(("cj", "ck")) for it in val)
    clinic_items = list_folder(clinic / "test")
    assert len(clinic_items) == 612 and len({it.group for it in clinic_items}) == 29
    assert isinstance(clinic_items[0], SegItem) and clinic_items[0].group == "1"


def test_pranet_train_folder_names(tmp_path, folder):
    train = tmp_path / "TrainDataset"  # PraNet: TrainDataset/image + TrainDataset/mask
    shutil.copytree(folder / "images", train / "image")
    shutil.copytree(folder / "masks", train / "mask")
    items = list_folder(train)
    assert len(items) == 12 and items[0].mask.endswith("mask/001.png") and items[0].group == ""


def test_a_subset_run_checks_only_the_files_it_reads(tmp_path):
    from gpfuse.config import SegDataConfig
    from gpfuse.tasks.seg_data import SegDataModule

    train = write_synthetic_polyp_folder(tmp_path / "train", n_images=12, size=32)
    test = write_synthetic_polyp_folder(tmp_path / "test", n_images=6, size=32)
    config = SegDataConfig(source="polyp_folders", train=[str(train)], test={"t": str(test)}, subset=3)
    first = SegDataModule(config, seed=5)
    first.setup()
    read = {it.image for items in first.items.values() for it in items}
    unread = sorted({it.image for it in list_folder(train) + list_folder(test)} - read)
    assert len(read) == 3 + 1 + 3 and len(unread) == 18 - 7  # train, valid (10% of 12), test
    for path in unread:
        open(path, "wb").close()  # broken, but never read by this run
    again = SegDataModule(config, seed=5)
    again.setup()
    assert again.items == first.items and again.counts["train"] == {"skipped": 0, "binarized": 0}
    read_one = first.items["test_t"][0].image
    open(read_one, "wb").close()
    with pytest.raises(ValueError, match=rf"(?s)test\[t\].*{read_one}"):
        SegDataModule(config, seed=5).setup()


def test_the_held_out_images_do_not_move_with_the_run_seed(tmp_path):
    from gpfuse.config import SegDataConfig
    from gpfuse.tasks.seg_data import SegDataModule

    folder = write_synthetic_polyp_folder(tmp_path / "polyps", n_images=12, size=32)

    def parts(seed: int, **data) -> dict[str, list[str]]:
        module = SegDataModule(SegDataConfig(source="polyp_folders", train=[str(folder)], split="random", **data), seed)
        module.setup()
        return {k: [it.name for it in v] for k, v in module.items.items()}

    fixed = parts(1)
    assert parts(2) == fixed and parts(3, subset=6)["test_held_out"] == fixed["test_held_out"]
    assert any(parts(1, split_seed=k)["test_held_out"] != fixed["test_held_out"] for k in (1, 2, 3))


def test_a_run_saved_before_split_seed_keeps_the_splits_it_was_drawn_with():
    from gpfuse.config import validate_config, validate_saved_config

    raw = {
        "name": "old",
        "data": {"source": "polyp_folders", "train": ["a"], "split": "random"},
        "model": {"name": "ea_dk"},
        "train": {"seed": 7},
    }
    assert validate_config(raw).data.split_seed == 0  # a new run: the fixed default
    assert validate_saved_config(raw, "old/config.yaml").data.split_seed == 7  # what train.seed drew then
    raw["data"]["split_seed"] = 3
    assert validate_saved_config(raw, "old/config.yaml").data.split_seed == 3
