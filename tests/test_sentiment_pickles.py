"""MMSA/MulT feature pickles: layouts, masks, validation, the restricted unpickler and npz conversion."""

from __future__ import annotations

import logging
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gpfuse.data.features import load_features_npz
from gpfuse.data.safe_pickle import UnsafePickleError, safe_load_pickle
from gpfuse.data.sentiment_pickles import (
    convert_feature_pickle,
    load_feature_pickle,
    load_mmsa_pickle,
    load_mult_pickle,
)
from gpfuse.data.synthetic_pickles import MMSA_SHAPES, MULT_SHAPES, write_mmsa_pickle, write_mult_pickle

SIZES = {"train": 8, "valid": 4, "test": 4}


def _raw(path: Path) -> dict:
    with path.open("rb") as f:  # our own freshly written file: plain pickle is fine here
        return pickle.load(f)


def _dump(obj, path: Path) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for split in a:
        x, y = a[split], b[split]
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert (x.texts is None) == (y.texts is None)
        if x.texts is not None:
            np.testing.assert_array_equal(x.texts, y.texts)
        assert x.features.keys() == y.features.keys() == x.masks.keys() == y.masks.keys()
        for m in x.features:
            np.testing.assert_array_equal(x.features[m], y.features[m])
            np.testing.assert_array_equal(x.masks[m], y.masks[m])


@pytest.fixture
def mmsa(tmp_path) -> Path:
    return write_mmsa_pickle(tmp_path / "aligned_50.pkl")


@pytest.fixture
def mult(tmp_path) -> Path:
    return write_mult_pickle(tmp_path / "mosi_data.pkl")


def test_mmsa_shapes_masks_labels(mmsa):
    raw, splits = _raw(mmsa), load_mmsa_pickle(mmsa)
    assert list(splits) == ["train", "valid", "test"]
    for split, sf in splits.items():
        r, n = raw[split], SIZES[split]
        assert len(sf) == n and sf.ids.dtype.kind == "U" and sf.labels.dtype == np.float32
        assert list(sf.ids) == list(r["id"]) and list(sf.texts) == list(r["raw_text"])
        np.testing.assert_array_equal(sf.labels, r["regression_labels"])
        for m, (seq_len, dim) in MMSA_SHAPES.items():
            assert sf.features[m].shape == (n, seq_len, dim) and sf.features[m].dtype == np.float32
            assert sf.masks[m].dtype == bool
            np.testing.assert_array_equal(sf.features[m], r[m])
        np.testing.assert_array_equal(sf.masks["text"], r["text_bert"][:, 1, :] == 1)
        for m in ("audio", "vision"):
            want = np.array([[t < length for t in range(MMSA_SHAPES[m][0])] for length in r[f"{m}_lengths"]])
            np.testing.assert_array_equal(sf.masks[m], want)
            assert 0 < sf.masks[m].sum() < sf.masks[m].size  # the lengths really vary


def test_mmsa_masks_follow_lengths_and_text_bert_not_zero_rows(mmsa):
    raw = _raw(mmsa)
    raw["train"]["audio_lengths"][0] = 1
    raw["train"]["vision_lengths"][1] = 0
    raw["train"]["text_bert"][2, 1, :] = 0
    raw["train"]["text_bert"][2, 1, 3] = 1
    sf = load_mmsa_pickle(_dump(raw, mmsa))["train"]
    assert sf.masks["audio"][0].tolist() == [True] + [False] * 11
    assert not sf.masks["vision"][1].any()
    assert np.flatnonzero(sf.masks["text"][2]).tolist() == [3]


def test_mmsa_without_lengths_masks_from_zero_rows(tmp_path):
    with_len = load_mmsa_pickle(write_mmsa_pickle(tmp_path / "a.pkl", lengths=True))
    no_len_path = write_mmsa_pickle(tmp_path / "b.pkl", lengths=False)
    assert "audio_lengths" not in _raw(no_len_path)["train"]
    no_len = load_mmsa_pickle(no_len_path)
    _assert_same(with_len, no_len)  # same seed: padding is zero, so zero-row masks equal length masks


def test_mult_shapes_left_padded_masks_ids(mult):
    raw, splits = _raw(mult), load_mult_pickle(mult)
    for split, sf in splits.items():
        r, n = raw[split], SIZES[split]
        assert sf.texts is None
        np.testing.assert_array_equal(sf.labels, r["labels"][:, 0, 0])
        assert list(sf.ids) == [f"vid{i % 3}_{i}.0_{i + 1}.5" for i in range(n)]
        for m, (seq_len, dim) in MULT_SHAPES.items():
            assert sf.features[m].shape == (n, seq_len, dim)
            np.testing.assert_array_equal(sf.masks[m], np.abs(r[m]).sum(-1) > 0)
            for row in sf.masks[m]:  # left padding: False... then True...
                k = int(row.sum())
                assert k >= 1 and row[seq_len - k :].all() and not row[: seq_len - k].any()


def test_modalities_subset_and_bad_names(mmsa, mult):
    sf = load_mult_pickle(mult, modalities=("audio",))["valid"]
    assert list(sf.features) == list(sf.masks) == ["audio"]
    raw = _raw(mmsa)
    for split in raw.values():
        del split["vision"]
    assert list(load_mmsa_pickle(_dump(raw, mmsa), ("text", "audio"))["test"].features) == ["text", "audio"]
    with pytest.raises(ValueError, match="modalities must be distinct names from"):
        load_mmsa_pickle(mmsa, modalities=("text", "video"))


def test_auto_detection(mmsa, mult, tmp_path):
    _assert_same(load_feature_pickle(mmsa), load_mmsa_pickle(mmsa))
    _assert_same(load_feature_pickle(mult), load_mult_pickle(mult))
    odd = _dump(
        {s: {"feats": np.zeros((2, 3, 4)), "y": np.zeros(2)} for s in ("train", "valid", "test")}, tmp_path / "odd.pkl"
    )
    with pytest.raises(ValueError, match=r"odd\.pkl.*cannot detect.*\['feats', 'y'\]"):
        load_feature_pickle(odd)
    with pytest.raises(ValueError, match="layout must be one of"):
        load_feature_pickle(mmsa, layout="csv")


def test_nonfinite_features_replaced_and_counted(mult, caplog):
    raw = _raw(mult)
    raw["train"]["audio"][0, -1, :2] = [np.nan, np.inf]
    raw["train"]["audio"][3, -1, 5] = -np.inf
    raw["test"]["vision"][1] = np.nan  # a whole utterance of NaN becomes zeros: fully masked
    _dump(raw, mult)
    with caplog.at_level(logging.WARNING):
        splits = load_mult_pickle(mult)
    logs = [r.getMessage() for r in caplog.records]
    assert any(f"{mult}:train/audio" in msg and "replaced 3 non-finite" in msg for msg in logs), logs
    assert any(f"{mult}:test/vision" in msg and "replaced 1750 non-finite" in msg for msg in logs), logs  # 50*35
    audio = splits["train"].features["audio"]
    assert np.isfinite(audio).all() and audio[0, -1, 0] == 0 and audio[0, -1, 1] == 0 and audio[3, -1, 5] == 0
    assert audio[0, -1, 2] == raw["train"]["audio"][0, -1, 2]
    assert not splits["test"].masks["vision"][1].any()


def test_nonfinite_labels_rejected(mmsa):
    raw = _raw(mmsa)
    raw["valid"]["regression_labels"][2] = np.nan
    with pytest.raises(
        ValueError, match=r"aligned_50\.pkl:valid/regression_labels: 1 label\(s\) are NaN or inf \(e.g. row 2\)"
    ):
        load_mmsa_pickle(_dump(raw, mmsa))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class _Custom:
    value: int = 1


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"train": {"labels": _Exploit(marker)}, "valid": {}, "test": {}})
    # The payload is live: plain pickle runs it.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(payload)
    for load in (safe_load_pickle, load_feature_pickle, load_mult_pickle):
        with pytest.raises(UnsafePickleError, match=rf"evil\.pkl.*'{os.system.__module__}\.system'"):
            load(bad)
    assert not marker.exists()

    custom = _dump({"train": {"id": _Custom()}}, tmp_path / "custom.pkl")
    with pytest.raises(UnsafePickleError, match=rf"custom\.pkl.*'{_Custom.__module__}\._Custom'"):
        safe_load_pickle(custom)
    getattr_trick = _dump(getattr, tmp_path / "getattr.pkl")
    with pytest.raises(ValueError, match=r"getattr\.pkl.*'builtins\.getattr'"):
        safe_load_pickle(getattr_trick)


class _Py2Pickler(pickle._Pickler):
    """Writes every str/bytes as a Python 2 ``str`` (BINSTRING), as Python 2 numpy pickles do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(data)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def test_python2_numpy_pickle_loads(mult, tmp_path):
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(_raw(mult))
    blob = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"_codecs" not in blob and b"numpy.core.multiarray\n_reconstruct" in blob
    with pytest.raises(UnicodeDecodeError):  # the default ASCII decoding cannot read it
        pickle.loads(blob)
    py2 = tmp_path / "py2.pkl"
    py2.write_bytes(blob)
    _assert_same(load_mult_pickle(py2), load_mult_pickle(mult))


def test_round_trip_through_npz(mmsa, mult, tmp_path):
    for src in (mmsa, mult):
        dst = convert_feature_pickle(src, tmp_path / "out" / f"{src.stem}.npz")
        assert dst == tmp_path / "out" / f"{src.stem}.npz"
        _assert_same(load_features_npz(dst), load_feature_pickle(src))


def test_structure_errors_name_file_split_and_key(mmsa, mult):
    raw = _raw(mult)
    del raw["valid"]
    with pytest.raises(ValueError, match=r"mosi_data\.pkl: missing split\(s\) \['valid'\]"):
        load_mult_pickle(_dump(raw, mult))

    cases = [
        (lambda r: r["train"].pop("audio"), r"aligned_50\.pkl:train: missing key 'audio'"),
        (lambda r: r["test"].pop("id"), r"aligned_50\.pkl:test: missing key 'id'"),
        (
            lambda r: r["train"].__setitem__("audio", r["train"]["audio"][:, :, 0]),
            r"aligned_50\.pkl:train/audio: expected 3 dimensions, got shape \(8, 12\)",
        ),
        (
            lambda r: r["valid"].__setitem__("vision", r["valid"]["vision"][:3]),
            r"aligned_50\.pkl:valid/vision: has 3 rows but regression_labels has 4",
        ),
        (
            lambda r: r["train"]["vision_lengths"].__setitem__(5, 11),
            r"aligned_50\.pkl:train/vision_lengths: vision length 11 at index 5 is not an integer in \[0, 10\]",
        ),
        (
            lambda r: r["train"].__setitem__("text_bert", r["train"]["text_bert"][:, :, :5]),
            r"aligned_50\.pkl:train/text_bert: expected \(N, 3, 8\)",
        ),
        (
            lambda r: r["test"].__setitem__("audio", r["test"]["raw_text"][:, None, None]),
            r"aligned_50\.pkl:test/audio: expected numbers, got dtype object",
        ),
    ]
    for corrupt, match in cases:
        raw = _raw(write_mmsa_pickle(mmsa))
        corrupt(raw)
        with pytest.raises(ValueError, match=match):
            load_mmsa_pickle(_dump(raw, mmsa))


def test_missing_truncated_and_non_pickle_files(mmsa, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pkl"):
        load_feature_pickle(tmp_path / "nowhere.pkl")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(mmsa.read_bytes()[: mmsa.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.pkl: truncated or corrupt pickle"):
        load_mmsa_pickle(cut)
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle at all\n")
    with pytest.raises(ValueError, match=r"notes\.pkl: truncated or corrupt pickle"):
        safe_load_pickle(text)
    listed = _dump([1, 2], tmp_path / "list.pkl")
    with pytest.raises(ValueError, match=r"list\.pkl: expected a dict with splits"):
        load_feature_pickle(listed)
