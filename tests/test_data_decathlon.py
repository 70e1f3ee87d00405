"""Decathlon folders: reading dataset.json through MONAI, every bad case named (missing file, shape or affine
mismatch, label out of range), seeded carving, the real MSD Hippocampus layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import SHARED_DATA
from gpfuse.data.decathlon import carve_cases, check_cases, read_decathlon
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon


@pytest.fixture
def root(tmp_path):
    return write_synthetic_decathlon(tmp_path / "dec", n_cases=5, shape=(16, 16, 16), num_classes=3)


def test_reads_cases_and_labels(root):
    cases, labels = read_decathlon(root)
    assert len(cases) == 5 and labels[0] == "background" and len(labels) == 3
    assert cases[0].image.endswith("imagesTr/case_001.nii.gz") and cases[0].name == "case_001"
    kept, skipped = check_cases(cases, 3)
    assert len(kept) == 5 and skipped == 0


def test_a_missing_file_is_named(root):
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][1]["label"] = "./labelsTr/nowhere.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    cases, _ = read_decathlon(root)
    with pytest.raises(FileNotFoundError, match=r"nowhere.nii.gz: listed in dataset.json but not found"):
        check_cases(cases, 3)
    kept, skipped = check_cases(cases, 3, on_bad_file="skip")
    assert len(kept) == 4 and skipped == 1


def _rewrite(path, array=None, affine=None):
    image = nib.load(path)
    data = np.asarray(image.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("shape", r"label shape \(16, 16, 12\) differs from its image's \(16, 16, 16\)"),
        ("affine", "label affine differs from its image's"),
        ("value", r"label values \[7\] outside the classes 0..2"),
    ],
)
def test_each_bad_case_is_named(root, damage, message):
    label = root / "labelsTr" / "case_002.nii.gz"  # the second case
    if damage == "shape":
        _rewrite(label, np.zeros((16, 16, 12), dtype=np.uint8))
    elif damage == "affine":
        _rewrite(label, affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    else:
        data = np.asarray(nib.load(label).dataobj).copy()
        data[0, 0, 0] = 7
        _rewrite(label, data)
    cases, _ = read_decathlon(root)
    with pytest.raises(ValueError, match=message) as err:
        check_cases(cases, 3, what="dataset")
    assert "case_002" in str(err.value) and "dataset: 1 unusable cases" in str(err.value)
    assert len(check_cases(cases, 3, on_bad_file="skip")[0]) == 4


def test_bad_dataset_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        read_decathlon(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "x"}, "training": []}))
    with pytest.raises(ValueError, match="numbered 0..C-1"):
        read_decathlon(tmp_path)


def test_carving_is_seeded_and_disjoint(root):
    cases, _ = read_decathlon(root)
    train, val, test = carve_cases(cases, (1, 2), seed=3)
    assert (len(train), len(val), len(test)) == (2, 1, 2)
    assert not {c.name for c in train} & {c.name for c in val + test} and not {c.name for c in val} & {
        c.name for c in test
    }
    assert carve_cases(cases, (1, 2), seed=3) == [train, val, test]
    with pytest.raises(ValueError, match="at least one must stay"):
        carve_cases(cases, (3, 2), seed=0)


def test_real_msd_hippocampus_layout():
    root = SHARED_DATA / "msd-hippocampus"
    if not (root / "dataset.json").is_file():
        pytest.skip(f"MSD Hippocampus not found at {root} (set GPFUSE_DATA)")
    cases, labels = read_decathlon(root)
    assert len(cases) == 208 and labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    kept, skipped = check_cases(cases[:10], 3)
    assert len(kept) == 10 and skipped == 0


def _two_class_case(tmp_path):
    """Label 1 in the front half of the A-P axis (RAS axis 1 low), label 2 behind it; identity affine."""
    image = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    label = np.zeros((16, 16, 16), np.uint8)
    label[4:12, 2:7, 4:12], label[4:12, 9:14, 4:12] = 1, 2
    paths = {}
    for key, array in (("image", image), ("label", label)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[key])
    return paths


@pytest.mark.parametrize("flip_axes, swapped", [((0,), False), ((0, 2), False), ((1,), True)])
def test_flips_keep_or_swap_positional_classes(tmp_path, flip_axes, swapped):
    """A flip along an axis that names classes (A-P for the hippocampus) swaps where they lie: flip_axes
    decides which axes may be mirrored, and 90-degree rotations (cubic patch: every plane qualifies by size)
    never involve one left out."""
    from gpfuse.data.volume_transforms import volume_transforms

    transform = volume_transforms(
        (16, 16, 16), train=True, crop_foreground=False, samples=1, flip_axes=flip_axes, flip_prob=1.0
    )
    out = transform(_two_class_case(tmp_path))[0]["label"][0].numpy()
    front, back = (np.argwhere(out == c)[:, 1].mean() for c in (1, 2))
    assert (front > back) == swapped


def test_the_test_cases_do_not_move_with_the_run_seed(root):
    from gpfuse.config import VolumeDataConfig
    from gpfuse.tasks.volume_data import VolumeDataModule

    def cases(seed: int, **data) -> dict[str, list[str]]:
        config = VolumeDataConfig(
            source="decathlon",
            root=str(root),
            descriptions=str(root / "descriptions.csv"),
            val_cases=1,
            test_cases=2,
            **data,
        )
        module = VolumeDataModule(config, seed=seed)
        module.setup()
        return {k: [c.name for c in v] for k, v in module.cases.items()}

    fixed = cases(1)
    assert cases(2) == fixed and cases(3, subset=2)["test"] == fixed["test"]  # seeds vary training only
    assert any(cases(1, split_seed=k)["test"] != fixed["test"] for k in (1, 2, 3))  # a split_seed moves them
