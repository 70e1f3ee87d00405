"""Re-identification data: Colo-Pair, Market-1501 and CUHK01 layouts, transforms, dataset, P x K sampler."""

from __future__ import annotations

import csv
import functools
import logging
import operator
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gpfuse.data.colo_pair import colo_pair_fold_videos, load_colo_pair, read_report_table
from gpfuse.data.cuhk01 import list_cuhk01, load_cuhk01
from gpfuse.data.images import IMAGENET_MEAN, IMAGENET_STD, read_image
from gpfuse.data.market1501 import load_market1501
from gpfuse.data.reid import ImageTransform, RandomIdentitySampler, ReIDImageDataset, ReIDItem, ReIDSplit
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair, write_synthetic_market1501


@pytest.fixture(scope="module")
def colo_src(tmp_path_factory):
    return write_synthetic_colo_pair(tmp_path_factory.mktemp("colo") / "cp", n_videos=12, frames_per_view=2, size=48)


@pytest.fixture
def colo(colo_src, tmp_path):
    """A private copy of the generated Colo-Pair folder (tests may break it)."""
    return shutil.copytree(colo_src, tmp_path / "cp")


@pytest.fixture(scope="module")
def market_src(tmp_path_factory):
    return write_synthetic_market1501(tmp_path_factory.mktemp("market") / "m", n_ids=10, images_per_id=4)


@pytest.fixture
def market(market_src, tmp_path):
    return shutil.copytree(market_src, tmp_path / "m")


def _groups(items):
    return {it.group for it in items}


def _pids(items):
    return {it.pid for it in items}


# --------------------------------------------------------------------------------------------- Colo-Pair
def test_fold_rule_reproduces_the_spec_for_31_videos():
    videos = [f"v{i:02d}x" for i in range(31)]
    expected = {0: videos[24:31], 1: videos[16:24], 2: videos[8:16], 3: videos[0:8]}
    for fold, test in expected.items():
        assert colo_pair_fold_videos(list(reversed(videos)), fold) == test
    # any N: contiguous blocks, partition of the sorted list, last block the shortest
    twelve = [f"v{i:02d}x" for i in range(13)]
    blocks = [colo_pair_fold_videos(twelve, f) for f in range(4)]
    assert [len(b) for b in blocks] == [3, 3, 3, 4] and functools.reduce(operator.iadd, reversed(blocks), []) == twelve
    with pytest.raises(ValueError, match="fold must be in"):
        colo_pair_fold_videos(videos, 4)
    with pytest.raises(ValueError, match="num_folds"):
        colo_pair_fold_videos(videos[:3], 0, num_folds=4)


def test_colo_pair_folds_are_disjoint_and_complete(colo_src):
    videos = sorted(p.name for p in (colo_src / "resized_frame").iterdir())
    assert videos[:3] == ["ab1", "ab2", "cd1"]
    tested = []
    for fold in range(4):
        split, reports = load_colo_pair(colo_src, fold, val_videos=2, seed=0)
        test, val, train = _groups(split.query), _groups(split.val_query), _groups(split.train)
        assert test == set(colo_pair_fold_videos(videos, fold)) == _groups(split.gallery)
        assert len(val) == 2 and _groups(split.val_gallery) == val
        assert not (test & val) and not (test & train) and not (val & train)
        assert test | val | train == set(videos)
        tested += sorted(test)
        # pids: video index for query/gallery/val, relabelled 0..N-1 for train
        assert all(it.pid == videos.index(it.group) for it in split.query + split.gallery + split.val_query)
        assert _pids(split.train) == set(range(len(train))) == set(range(split.num_train_pids))
        assert not (_pids(split.query) & _pids(split.val_query))
        # views: query = view 1 (camid 0), gallery = view 2 (camid 1), train both, 2 frames each
        assert {it.camid for it in split.query} == {0} and {it.camid for it in split.gallery} == {1}
        assert all("/1/" in it.path for it in split.query) and all("/2/" in it.path for it in split.gallery)
        assert len(split.query) == len(split.gallery) == 2 * len(test)
        assert Counter(it.camid for it in split.train) == {0: 2 * len(train), 1: 2 * len(train)}
        assert set(reports) == set(videos)
    assert sorted(tested) == videos  # each video tested exactly once over the folds
    # validation is seeded: same seed same videos, and it moves with the seed
    a = _groups(load_colo_pair(colo_src, 0, seed=0)[0].val_query)
    assert a == _groups(load_colo_pair(colo_src, 0, seed=0)[0].val_query)
    assert any(_groups(load_colo_pair(colo_src, 0, seed=s)[0].val_query) != a for s in range(1, 6))
    assert not load_colo_pair(colo_src, 0, val_videos=0)[0].has_val


def test_colo_pair_reports_by_patient_and_xlsx(colo, tmp_path):
    split, reports = load_colo_pair(colo, 3)
    table = read_report_table(colo / "reports.csv")
    assert reports["ab1"] == reports["ab2"] == table["ab"] and reports["ab1"] != reports["cd1"]
    assert "polyp" in reports["cd1"] and "mm" in reports["cd1"]
    ds = ReIDImageDataset(split.query, ImageTransform(64), reports=reports)
    sample = ds[0]
    assert sample["report"] == reports[sample["group"]] and sample["image"].shape == (3, 64, 64)
    # the same table as .xlsx gives the same reports (default = the single table in root)
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    for row in csv.reader((colo / "reports.csv").open()):
        ws.append(row)
    xlsx = tmp_path / "reports.xlsx"
    wb.save(xlsx)
    assert load_colo_pair(colo, 3, report_table=xlsx)[1] == reports
    shutil.copy(xlsx, colo / "reports.xlsx")
    with pytest.raises(ValueError, match="several report tables"):
        load_colo_pair(colo, 3)
    (colo / "reports.csv").unlink()
    assert load_colo_pair(colo, 3)[1] == reports


def _write_table(path, rows, header=("id", "Eng_text")):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_colo_pair_bad_inputs_are_named(colo, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="resized_frame"):
        load_colo_pair(tmp_path / "nowhere", 0)
    rows = list(csv.reader((colo / "reports.csv").open()))[1:]
    good = {r[0]: r[1] for r in rows}

    bad = tmp_path / "no_text.csv"
    _write_table(bad, rows, header=("id", "text"))
    with pytest.raises(ValueError, match=r"no_text.csv.*missing column.*Eng_text"):
        load_colo_pair(colo, 0, report_table=bad)
    _write_table(bad, [r[::-1] for r in rows], header=("Eng_text", "patient"))
    with pytest.raises(ValueError, match=r"missing column.*'id'"):
        load_colo_pair(colo, 0, report_table=bad)

    _write_table(bad, [r for r in rows if r[0] != "cd"])
    with pytest.raises(ValueError, match=r"video 'cd1': patient 'cd' has no row"):
        load_colo_pair(colo, 0, report_table=bad)
    _write_table(bad, [[k, "" if k == "ab" else v] for k, v in good.items()])
    with pytest.raises(ValueError, match=r"video 'ab1': patient 'ab' has an empty Eng_text"):
        load_colo_pair(colo, 0, report_table=bad)
    with caplog.at_level(logging.WARNING):
        _, reports = load_colo_pair(colo, 0, report_table=bad, missing_report="empty")
    assert reports["ab1"] == reports["ab2"] == "" and reports["cd1"] == good["cd"]
    assert "2 Colo-Pair video(s) kept with an empty report" in caplog.text
    with pytest.raises(ValueError, match="missing_report"):
        load_colo_pair(colo, 0, missing_report="drop")

    with pytest.raises(ValueError, match="cannot carve 9 validation"):
        load_colo_pair(colo, 0, val_videos=9)

    for image in (colo / "resized_frame" / "ef1" / "1").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"video 'ef1': no images in view folder"):
        load_colo_pair(colo, 0)
    shutil.rmtree(colo / "resized_frame" / "ef1")
    shutil.rmtree(colo / "resized_frame" / "cd1" / "2")
    with pytest.raises(FileNotFoundError, match=r"video 'cd1': view folder missing: .*cd1/2"):
        load_colo_pair(colo, 0)


# --------------------------------------------------------------------------------------------- Market-1501
def test_market1501_layout(market):
    split = load_market1501(market)
    assert split.num_train_pids == 5 and len(split.train) == 20
    assert _pids(split.train) == set(range(5)) and _groups(split.train) == {f"{p:04d}" for p in range(1, 6)}
    assert _pids(split.query) == set(range(6, 11)) and len(split.query) == 5
    assert _pids(split.gallery) == set(range(6, 11)) | {0} and len(split.gallery) == 5 * 3 + 1
    assert all(0 <= it.camid <= 5 for it in split.train + split.query + split.gallery)
    one = next(it for it in split.query)
    assert f"_c{one.camid + 1}s1_" in one.path
    # junk (-1) ignored everywhere, distractors (0000) kept in the gallery only
    for folder in ("bounding_box_train", "query"):
        shutil.copy(next((market / "query").iterdir()), market / folder / "-1_c1s1_000001_00.jpg")
        shutil.copy(next((market / "query").iterdir()), market / folder / "0000_c3s1_000001_00.jpg")
    (market / "query" / "Thumbs.db").write_bytes(b"not an image")
    again = load_market1501(market)
    assert (len(again.train), len(again.query), len(again.gallery)) == (20, 5, 16)
    assert -1 not in _pids(again.gallery) and 0 not in _pids(again.query)
    val = load_market1501(market, val_ids=2)
    assert val.num_train_pids == 3 and len(_pids(val.val_query)) == 2 and _pids(val.val_query) == _pids(val.val_gallery)
    assert all(q.camid < g.camid for q in val.val_query for g in val.val_gallery if q.pid == g.pid)


def test_market1501_bad_names(market, caplog):
    shutil.copy(next((market / "query").iterdir()), market / "query" / "person_12.jpg")
    with pytest.raises(ValueError, match=r"query/person_12.jpg: not a Market-1501 name"):
        load_market1501(market)
    shutil.copy(next((market / "query").iterdir()), market / "query" / "0002_c0s1_000451_03.jpg")  # camera 0
    with caplog.at_level(logging.WARNING):
        split = load_market1501(market, strict=False)
    assert len(split.query) == 5
    assert "skipped 2 file(s)" in caplog.text and "person_12.jpg" in caplog.text
    shutil.rmtree(market / "query")
    with pytest.raises(FileNotFoundError, match="query"):
        load_market1501(market)


# --------------------------------------------------------------------------------------------- CUHK01
def _write_campus(root, n_ids=12):
    campus = root / "campus"
    campus.mkdir(parents=True)
    for pid in range(1, n_ids + 1):
        for img in range(1, 5):
            Image.new("RGB", (6, 16), (pid * 20 % 256, img * 50, 0)).save(campus / f"{pid:04d}{img:03d}.png")
    return root


def test_cuhk01_real(cuhk01_root):
    items = list_cuhk01(cuhk01_root)
    assert len(items) == 971 * 4 and _pids(items) == set(range(1, 972))
    assert all(Counter(it.camid for it in items if it.pid == p) == {0: 2, 1: 2} for p in (1, 500, 971))
    tests = []
    for i in range(10):
        split = load_cuhk01(cuhk01_root, i)
        test = _pids(split.query)
        assert len(test) == 486 and _pids(split.gallery) == test
        assert split.num_train_pids == 485 - 50 and len(_pids(split.val_query)) == 50
        assert not (test & _pids(split.val_query))
        train_ids = _groups(split.train)
        assert not (train_ids & {f"{p:04d}" for p in test}) and not (train_ids & _groups(split.val_query))
        assert len(train_ids | _groups(split.val_query) | _groups(split.query)) == 971
        assert all(it.path.endswith(("001.png", "002.png")) and it.camid == 0 for it in split.query + split.val_query)
        assert all(
            it.path.endswith(("003.png", "004.png")) and it.camid == 1 for it in split.gallery + split.val_gallery
        )
        assert len(split.query) == len(split.gallery) == 972
        tests.append(frozenset(test))
    assert len(set(tests)) == 10
    assert _pids(load_cuhk01(cuhk01_root, 3).query) == tests[3]  # reproducible
    assert load_cuhk01(cuhk01_root, 0, val_ids=0).num_train_pids == 485
    img = read_image(items[0].path)
    assert img.mode == "RGB" and img.size == (60, 160)


def test_cuhk01_generated_and_bad_names(tmp_path):
    root = _write_campus(tmp_path / "cuhk01")
    split = load_cuhk01(root, 0, num_train_ids=6, val_ids=2)
    assert split.num_train_pids == 4 and len(_pids(split.query)) == 6 and len(split.val_gallery) == 4
    assert load_cuhk01(root / "campus", 0, num_train_ids=6, val_ids=2) == split
    with pytest.raises(ValueError, match="split_index"):
        load_cuhk01(root, 10)
    with pytest.raises(ValueError, match="num_train_ids"):
        load_cuhk01(root, 0, num_train_ids=12)
    shutil.copy(root / "campus" / "0001001.png", root / "campus" / "0001005.png")
    with pytest.raises(ValueError, match=r"campus/0001005.png: CUHK01 identity"):
        load_cuhk01(root, 0, num_train_ids=6)
    (root / "campus" / "0001005.png").rename(root / "campus" / "img_1.png")
    with pytest.raises(ValueError, match=r"campus/img_1.png: not a CUHK01 name"):
        load_cuhk01(root, 0, num_train_ids=6)
    with pytest.raises(FileNotFoundError, match="CUHK01"):
        load_cuhk01(tmp_path / "nowhere", 0)


# --------------------------------------------------------------------------------------------- split, sampler
def test_split_checks():
    item = ReIDItem("a.png", 0, 0, "x")
    with pytest.raises(ValueError, match="relabelled"):
        ReIDSplit([item._replace(pid=3)], [item], [item])
    with pytest.raises(ValueError, match=r"demo: split 'gallery' is empty"):
        ReIDSplit([item], [item], [], name="demo").check()
    with pytest.raises(ValueError, match="'val_gallery' is empty"):
        ReIDSplit([item], [item], [item], val_query=[item]).check()


def test_random_identity_sampler():
    pids = [0] * 5 + [1] * 4 + [2] * 1 + [3] * 3 + [4] * 8 + [5] * 2
    sampler = RandomIdentitySampler(pids, batch_size=6, num_instances=2, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) and len(first) % 6 == 0 and len(first) >= 12
    for b in range(0, len(first), 6):
        batch = [pids[i] for i in first[b : b + 6]]
        counts = Counter(batch)
        assert len(counts) == 3 and set(counts.values()) == {2}
        for k in range(0, 6, 2):  # K consecutive indices per identity
            assert batch[k] == batch[k + 1]
    assert list(RandomIdentitySampler(pids, 6, 2, seed=3)) == first  # reproducible
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and len(second) == len(sampler)
    # an identity with fewer than K images is drawn with replacement (pid 2 has only index 9)
    assert Counter(first + second)[9] in (2, 4) and Counter(i for i in first if pids[i] == 4) == Counter(
        set(i for i in first if pids[i] == 4)
    )  # ... and the others without
    small = RandomIdentitySampler([0, 1, 1, 1], batch_size=4, num_instances=2)
    assert len(small) == 4 and Counter(small)[0] == 2
    with pytest.raises(ValueError, match="multiple of num_instances"):
        RandomIdentitySampler(pids, batch_size=7, num_instances=2)
    with pytest.raises(ValueError, match="at least"):
        RandomIdentitySampler([0, 0, 0], batch_size=4, num_instances=2)
    with pytest.raises(ValueError, match="at least"):
        RandomIdentitySampler(pids, batch_size=16, num_instances=2)


def test_random_identity_sampler_shares_whole_batches_between_processes():
    pids = [p for p in range(12) for _ in range(3 + p % 3)]
    whole = list(RandomIdentitySampler(pids, 6, 2, seed=5))
    shares = [RandomIdentitySampler(pids, 6, 2, seed=5, num_replicas=3, rank=r) for r in range(3)]
    assert isinstance(shares[0], torch.utils.data.DistributedSampler)  # Lightning leaves it in place under DDP
    lists = [list(s) for s in shares]
    assert len({len(x) for x in lists}) == 1 and len(lists[0]) % 6 == 0 and len(lists[0]) == len(shares[0])
    batches = [whole[b : b + 6] for b in range(0, len(whole), 6)]
    for rank, mine in enumerate(lists):
        assert [mine[b : b + 6] for b in range(0, len(mine), 6)] == batches[rank::3][: len(mine) // 6]
        for b in range(0, len(mine), 6):  # each process's batches stay P x K
            assert set(Counter(pids[i] for i in mine[b : b + 6]).values()) == {2}
    with pytest.raises(ValueError, match="rank"):
        RandomIdentitySampler(pids, 6, 2, num_replicas=2, rank=2)


# --------------------------------------------------------------------------------------------- transforms, dataset
def test_transform_normalisation_by_hand():
    image = Image.new("RGB", (40, 30), (128, 64, 255))
    x = ImageTransform((24, 16))(image)
    assert x.shape == (3, 24, 16) and x.dtype == torch.float32
    expected = [(128 / 255 - 0.485) / 0.229, (64 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((24, 16), expected[c]), atol=1e-5, rtol=0)
    assert ImageTransform(8, train=True)(image).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="size"):
        ImageTransform((0, 4))


def test_train_transform_is_seeded_crop_and_flip():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (20, 12, 3), dtype=np.uint8))
    base = ImageTransform((20, 12))(image) * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(
        IMAGENET_MEAN
    ).view(3, 1, 1)  # the [0, 1] image
    t = ImageTransform((20, 12), train=True, pad=3)
    for seed in range(6):
        out = t(image, generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        top, left = torch.randint(0, 7, (2,), generator=g).tolist()
        flip = torch.rand((), generator=g).item() < 0.5
        manual = torch.nn.functional.pad(base, (3, 3, 3, 3))[:, top : top + 20, left : left + 12]
        manual = manual.flip(-1) if flip else manual
        manual = (manual - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        torch.testing.assert_close(out, manual, atol=1e-5, rtol=0)
    torch.manual_seed(1)
    a = t(image)
    torch.manual_seed(1)
    torch.testing.assert_close(t(image), a)  # global RNG seeding applies
    flipped = ImageTransform((20, 12), train=True, pad=0, flip_p=1.0)(image)
    torch.testing.assert_close(flipped, ImageTransform((20, 12))(image).flip(-1))


def test_dataset_bad_images_raise_or_skip(colo, caplog):
    split, reports = load_colo_pair(colo, 0)
    bad = split.train[1]
    with open(bad.path, "wb") as f:
        f.write(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ValueError, match=rf"{bad.path}: cannot decode image"):
        read_image(bad.path)
    with pytest.raises(ValueError, match=rf"{bad.path}: cannot read image"):
        ReIDImageDataset(split.train, ImageTransform(32))
    with caplog.at_level(logging.WARNING):
        ds = ReIDImageDataset(split.train, ImageTransform(32), reports=reports, on_error="skip")
    assert ds.num_skipped == 1 and len(ds) == len(split.train) - 1 and bad not in ds.items
    assert "skipped 1 unreadable image(s)" in caplog.text and bad.path in caplog.text
    sample = ds[1]
    assert sample["index"].item() == 1 and sample["pid"].dtype == torch.long and sample["camid"].dtype == torch.long
    assert sample["group"] == ds.items[1].group and sample["report"] == reports[sample["group"]]
    loader = DataLoader(ds, batch_size=4, sampler=RandomIdentitySampler(ds.pids, 4, 2), drop_last=True)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["report"]) == 4
    assert batch["pid"][0] == batch["pid"][1] and batch["pid"][2] == batch["pid"][3]
    with pytest.raises(ValueError, match="on_error"):
        ReIDImageDataset(split.query, on_error="ignore")
    with pytest.raises(ValueError, match="no report for group"):
        ReIDImageDataset(split.query, reports={"zz1": "x"})
    with pytest.raises(FileNotFoundError):
        read_image(colo / "missing.jpg")
