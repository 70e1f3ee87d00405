"""SampleCollector: every sample once, in index order, from one process and from two real (gloo) processes
whose shards are padded the way DistributedSampler pads them; pooled gate statistics."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from gpfuse.tasks.gather import SampleCollector, first_occurrences, gate_moments, pooled_mean_std


def test_first_occurrences():
    assert first_occurrences(torch.tensor([4, 0, 2, 0, 4])).tolist() == [1, 2, 0]
    assert first_occurrences(torch.tensor([3])).tolist() == [0]


def test_collector_drops_duplicates_and_orders_by_index():
    c = SampleCollector(["score", "row"])
    c.update(torch.tensor([2, 0]), score=torch.tensor([20.0, 0.0]), row=torch.tensor([[2, 2], [0, 0]]))
    c.update(torch.tensor([1, 2]), score=torch.tensor([10.0, 99.0]), row=torch.tensor([[1, 1], [9, 9]]))
    out = c.compute()
    assert out["index"].tolist() == [0, 1, 2]
    assert out["score"].tolist() == [0.0, 10.0, 20.0]  # the first occurrence of sample 2 is kept
    assert out["row"].tolist() == [[0, 0], [1, 1], [2, 2]]
    with pytest.raises(KeyError, match="expects values"):
        c.update(torch.tensor([3]), score=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="rows for"):
        c.update(torch.tensor([3, 4]), score=torch.tensor([1.0]), row=torch.zeros(1, 2))
    for keys in (["index"], [], ["score", "score"]):
        with pytest.raises(ValueError, match=rf"keys must be distinct names other than 'index', got \{keys}"):
            SampleCollector(keys)
    with pytest.raises(ValueError, match=r"^SampleCollector\.compute\(\) before any update\(\)$"):
        SampleCollector(["score"]).compute()


def test_a_split_of_one_sample_keeps_its_sample_axis():
    collector = SampleCollector(["score", "record"])
    collector.update(torch.tensor([0]), score=torch.tensor([0.25]), record=torch.arange(7.0)[None])
    whole = collector.compute()  # torchmetrics would squeeze the one-element tensors to 0-d
    assert whole["index"].shape == (1,) and whole["score"].shape == (1,) and whole["record"].shape == (1, 7)
    assert whole["score"].tolist() == [0.25] and collector.compute()["index"].tolist() == [0]  # cached too


def test_pooled_gate_statistics_equal_those_of_all_values():
    a, b = torch.rand(3, 2, 5), torch.rand(4, 2, 5)
    moments = torch.cat([gate_moments(a), gate_moments(b)])
    mean, std = pooled_mean_std(moments)
    values = torch.cat([a.flatten(), b.flatten()]).double()
    assert mean == pytest.approx(values.mean().item(), abs=1e-12)
    assert std == pytest.approx(values.std().item(), abs=1e-12)


def _worker(rank: int, world: int, init: str, n: int, queue) -> None:
    # a forked child must not enter the OpenMP thread pool it inherited from a parent that used it (it hangs)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)  # pads to equal shards
    mine = torch.tensor(list(sampler))
    c = SampleCollector(["value", "vector"])
    for chunk in mine.split(2):  # batches of 2
        c.update(chunk, value=chunk.double() * 10, vector=torch.stack([chunk, -chunk], 1))
    out = c.compute()
    queue.put((rank, len(mine), out["index"].tolist(), out["value"].tolist(), out["vector"].tolist()))
    dist.destroy_process_group()


def test_collector_gathers_padded_shards_from_two_processes(tmp_path):
    n, world = 7, 2  # 7 samples on 2 processes: DistributedSampler repeats sample 0 on rank 1
    # forked, not spawned: the processes start with this one's imports instead of paying them again
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = (world, f"file://{tmp_path / 'rendezvous'}", n, queue)
    mp.start_processes(_worker, args=args, nprocs=world, join=True, start_method="fork")
    results = sorted(queue.get(timeout=60) for _ in range(world))
    assert [r[1] for r in results] == [4, 4]  # 8 shard slots for 7 samples
    for _, _, index, value, vector in results:  # every process: the whole split, each sample once, in order
        assert index == list(range(n))
        assert value == [10.0 * i for i in range(n)]
        assert vector == [[i, -i] for i in range(n)]


def test_pooled_gate_statistics_of_two_values_and_of_one():
    """The unbiased variance of 2 values divides by 1; one value has no spread (not a division by 0)."""
    mean, std = pooled_mean_std(gate_moments(torch.tensor([[1.0], [3.0]])))
    assert (mean, std) == (2.0, pytest.approx(2**0.5))
    mean, std = pooled_mean_std(gate_moments(torch.tensor([[5.0]])))
    assert (mean, std) == (5.0, 0.0)
    moments = gate_moments(torch.arange(6.0).reshape(2, 3))  # per sample: sum, sum of squares, count
    assert moments.tolist() == [[3.0, 5.0, 3.0], [12.0, 50.0, 3.0]]
