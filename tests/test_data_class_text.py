"""Class-description CSVs (gpfuse.data.class_text), the shipped CSVs and the synthetic Decathlon writer."""

from __future__ import annotations

import csv
import json
import os
import re
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gpfuse.data.class_text import (
    CONCEPTS,
    SHIPPED,
    ClassDescription,
    global_prompt,
    local_prompts,
    read_class_descriptions,
    shipped_descriptions,
)
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon

AMOS22 = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gall bladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "postcava",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}
AMOS22_OFFICIAL = {**AMOS22, 8: "arota"}  # the spelling of AMOS22's own dataset.json
BRAIN = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}  # json keys
HIPPOCAMPUS = {0: "background", 1: "Anterior", 2: "Posterior"}
SHARED_DATA = Path(os.environ.get("GPFUSE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PREFIXES = ("Shape", "Location", "Appearance/density", "Contour/symmetry", "Internal texture")


def _hippocampus_labels() -> dict:
    path = SHARED_DATA / "msd-hippocampus" / "dataset.json"
    return json.loads(path.read_text())["labels"] if path.is_file() else HIPPOCAMPUS


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _row(title: str, *, label: str | None = None, text: str = "x") -> list[str]:
    return ([label] if label is not None else []) + [title] + [f"{c} {text}" for c in CONCEPTS]


HEADER = ["Title", *CONCEPTS]


@pytest.mark.parametrize(
    "name, labels", [("amos22", AMOS22), ("amos22", AMOS22_OFFICIAL), ("msd_brain", BRAIN), ("msd_hippocampus", None)]
)
def test_shipped_descriptions_read(name, labels):
    labels = _hippocampus_labels() if labels is None else labels
    descriptions = read_class_descriptions(shipped_descriptions(name), labels)
    assert [d.index for d in descriptions] == sorted(int(i) for i in labels)
    assert len(descriptions) == {"amos22": 16, "msd_brain": 4, "msd_hippocampus": 3}[name]
    for d in descriptions:
        assert d.name == {int(i): n for i, n in labels.items()}[d.index]
        assert d.title and len(d.concepts) == 5 and all(len(c) > 20 for c in d.concepts)
        assert re.fullmatch(r"A medical image of the [^.]+\.", global_prompt(d))
        prompts = local_prompts(d)
        assert len(prompts) == 5
        for prompt, prefix, text in zip(prompts, PREFIXES, d.concepts):
            assert prompt.startswith(f"{prefix} of the ") and prompt.endswith(text) and text.endswith(".")


def test_shipped_files_are_package_data():
    assert set(SHIPPED) == {"amos22", "msd_brain", "msd_hippocampus"}
    for name in SHIPPED:
        assert resources.files("gpfuse").joinpath(f"data/class_texts/{name}.csv").is_file()
    with pytest.raises(KeyError, match="'kits'.*amos22, msd_brain, msd_hippocampus"):
        shipped_descriptions("kits")


def test_prompts_follow_the_templates():
    anterior = read_class_descriptions(shipped_descriptions("msd_hippocampus"), HIPPOCAMPUS)[1]
    assert anterior.title == "Anterior hippocampus (hippocampal head)"
    assert global_prompt(anterior) == "A medical image of the anterior hippocampus (hippocampal head)."
    assert local_prompts(anterior)[0] == (
        "Shape of the anterior hippocampus (hippocampal head): " + anterior.concepts[0]
    )
    liver = read_class_descriptions(shipped_descriptions("amos22"), AMOS22)[6]
    assert global_prompt(liver) == "A medical image of the liver."
    assert local_prompts(liver)[2].startswith("Appearance/density of the liver: About 55 to 65 HU")
    # an acronym keeps its case, a leading "the" is not doubled, a missing final period is added
    ivc = ClassDescription(9, "ivc", "IVC", ("tube", "right", "blood", "oval", "uniform"))
    assert global_prompt(ivc) == "A medical image of the IVC."
    assert local_prompts(ivc)[4] == "Internal texture of the IVC: uniform."
    the = ClassDescription(1, "x", " The Liver. ", ("a.",) * 5)
    assert global_prompt(the) == "A medical image of the liver."


def test_matching_by_title_label_case_and_alternatives(tmp_path):
    by_title = _write_csv(tmp_path / "t.csv", HEADER, [_row("  posterior "), _row("BACKGROUND"), _row("Anterior")])
    got = read_class_descriptions(by_title, HIPPOCAMPUS)
    assert [(d.index, d.name, d.title) for d in got] == [
        (0, "background", "BACKGROUND"),
        (1, "Anterior", "Anterior"),
        (2, "Posterior", "posterior"),
    ]
    assert got[1].concepts == tuple(f"{c} x" for c in CONCEPTS)
    by_label = _write_csv(
        tmp_path / "l.csv",
        ["Label", *HEADER],
        [
            _row("Background", label="background"),
            _row("Head", label=" anterior"),
            _row("Body and tail", label="rear|POSTERIOR"),
        ],
    )
    assert [d.title for d in read_class_descriptions(by_label, HIPPOCAMPUS)] == ["Background", "Head", "Body and tail"]
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + by_title.read_bytes())
    assert len(read_class_descriptions(bom, HIPPOCAMPUS)) == 3


def test_missing_class(tmp_path):
    path = _write_csv(tmp_path / "d.csv", HEADER, [_row("background"), _row("Anterior")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: no description for class 2 'Posterior'")):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "e.csv", HEADER, [_row("Anterior")])
    with pytest.raises(ValueError, match=re.escape("no description for class 0 'background', class 2 'Posterior'")):
        read_class_descriptions(path, HIPPOCAMPUS)


def test_row_matching_no_class(tmp_path):
    path = _write_csv(tmp_path / "d.csv", HEADER, [_row("background"), _row("Liver"), _row("Anterior")])
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{path}: line 3: Title 'Liver' matches no class of the labels "
            "(0 'background', 1 'Anterior', 2 'Posterior')"
        ),
    ):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "l.csv", ["Label", *HEADER], [_row("Anterior", label="head")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: Label 'head' matches no class")):
        read_class_descriptions(path, HIPPOCAMPUS)  # with a Label column the Title is not used for matching
    path = _write_csv(tmp_path / "m.csv", ["Label", *HEADER], [_row("Both", label="anterior|posterior")])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "line 2: Label 'anterior|posterior' matches several classes (class 1 'Anterior', class 2 'Posterior')"
        ),
    ):
        read_class_descriptions(path, HIPPOCAMPUS)


def test_duplicate_class(tmp_path):
    path = _write_csv(
        tmp_path / "d.csv", HEADER, [_row("background"), _row("Anterior"), _row("Posterior"), _row(" anterior ")]
    )
    with pytest.raises(
        ValueError, match=re.escape(f"{path}: line 5: class 1 'Anterior' is described twice (first on line 3)")
    ):
        read_class_descriptions(path, HIPPOCAMPUS)
    with pytest.raises(ValueError, match="labels 1 and 2 have the same name 'anterior'"):
        read_class_descriptions(path, {0: "background", 1: "Anterior", 2: "anterior"})


def test_missing_and_unexpected_columns(tmp_path):
    path = _write_csv(tmp_path / "d.csv", HEADER[:-1], [_row("background")[:-1]])
    with pytest.raises(ValueError, match=re.escape(f"{path}: missing column(s) 'Internal Texture'; the header is")):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "t.csv", ["Name", *CONCEPTS], [_row("background")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: missing column(s) 'Title'")):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "u.csv", [*HEADER, "Size"], [[*_row("background"), "big"]])
    with pytest.raises(ValueError, match=re.escape(f"{path}: unexpected column(s) 'Size'")):
        read_class_descriptions(path, HIPPOCAMPUS)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=re.escape(f"{empty}: empty file")):
        read_class_descriptions(empty, HIPPOCAMPUS)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_class_descriptions(tmp_path / "nope.csv", HIPPOCAMPUS)


def test_empty_cells_and_bad_rows(tmp_path):
    row = _row("Anterior")
    row[2] = "  "  # Location
    path = _write_csv(tmp_path / "d.csv", HEADER, [_row("background"), row, _row("Posterior")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3 (class 1 'Anterior'): empty 'Location'")):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "s.csv", HEADER, [_row("background"), _row("Anterior")[:4]])
    with pytest.raises(ValueError, match=re.escape("line 3 (class 1 'Anterior'): empty 'Contour/Symmetry'")):
        read_class_descriptions(path, HIPPOCAMPUS)  # a short row: the missing cells are empty
    path = _write_csv(tmp_path / "t.csv", ["Label", *HEADER], [_row("", label="anterior")])
    with pytest.raises(ValueError, match=re.escape("line 2 (class 1 'Anterior'): empty 'Title'")):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "k.csv", ["Label", *HEADER], [_row("Head", label=" ")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: empty 'Label'")):
        read_class_descriptions(path, HIPPOCAMPUS)
    path = _write_csv(tmp_path / "w.csv", HEADER, [[*_row("background"), "spill"]])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2 has 7 cells, the header 6")):
        read_class_descriptions(path, HIPPOCAMPUS)


def test_synthetic_decathlon(tmp_path):
    root = write_synthetic_decathlon(
        tmp_path / "a", n_cases=3, shape=(24, 20, 16), num_classes=4, spacing=(1.5, 1.0, 2.0), seed=3
    )
    dataset = json.loads((root / "dataset.json").read_text())
    assert {"name", "labels", "modality", "training", "numTraining"} <= set(dataset)
    assert dataset["labels"] == {"0": "background", "1": "smooth organ", "2": "striped organ", "3": "spotted organ"}
    assert dataset["numTraining"] == 3 and len(dataset["training"]) == 3
    listed = {p for case in dataset["training"] for p in (case["image"], case["label"])}
    on_disk = {f"./{p.relative_to(root).as_posix()}" for p in root.glob("*Tr/*.nii.gz")}
    assert listed == on_disk and len(on_disk) == 6
    assert not list(root.rglob("*.tmp"))
    for case in dataset["training"]:
        image, label = nib.load(root / case["image"]), nib.load(root / case["label"])
        for img, dtype in ((image, np.float32), (label, np.uint8)):
            assert img.shape == (24, 20, 16) and img.get_data_dtype() == dtype
            assert np.allclose(img.affine, np.diag([1.5, 1.0, 2.0, 1.0]))
            assert np.allclose(img.header.get_zooms(), (1.5, 1.0, 2.0))
        values = np.asarray(label.dataobj)
        assert values.dtype == np.uint8 and set(np.unique(values)) == {0, 1, 2, 3}
        pixels = np.asarray(image.dataobj)
        assert (
            pixels[values == 1].mean()
            > pixels[values == 2].mean()
            > pixels[values == 0].mean()
            > pixels[values == 3].mean()
        )
    descriptions = read_class_descriptions(root / "descriptions.csv", dataset["labels"])
    assert [d.name for d in descriptions] == list(dataset["labels"].values())
    assert global_prompt(descriptions[2]) == "A medical image of the striped organ."

    again = write_synthetic_decathlon(
        tmp_path / "b", n_cases=3, shape=(24, 20, 16), num_classes=4, spacing=(1.5, 1.0, 2.0), seed=3
    )
    other = write_synthetic_decathlon(
        tmp_path / "c", n_cases=1, shape=(24, 20, 16), num_classes=4, spacing=(1.5, 1.0, 2.0), seed=4
    )
    for case in dataset["training"]:
        for key in ("image", "label"):
            assert np.array_equal(
                np.asarray(nib.load(root / case[key]).dataobj), np.asarray(nib.load(again / case[key]).dataobj)
            )
    first = dataset["training"][0]["image"]
    assert not np.array_equal(np.asarray(nib.load(root / first).dataobj), np.asarray(nib.load(other / first).dataobj))
    assert (root / "descriptions.csv").read_bytes() == (again / "descriptions.csv").read_bytes()


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_synthetic_decathlon_defaults_and_class_counts(tmp_path, num_classes):
    root = write_synthetic_decathlon(tmp_path, n_cases=2, num_classes=num_classes)
    dataset = json.loads((root / "dataset.json").read_text())
    assert len(dataset["labels"]) == num_classes
    for case in dataset["training"]:
        label = nib.load(root / case["label"])
        assert label.shape == (32, 32, 32) and np.allclose(label.header.get_zooms(), 1.0)
        assert set(np.unique(np.asarray(label.dataobj))) == set(range(num_classes))
    assert len(read_class_descriptions(root / "descriptions.csv", dataset["labels"])) == num_classes


def test_synthetic_decathlon_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be 2 to 5"):
        write_synthetic_decathlon(tmp_path, num_classes=6)
    with pytest.raises(ValueError, match="too small"):
        write_synthetic_decathlon(tmp_path, shape=(8, 32, 32), num_classes=5)
