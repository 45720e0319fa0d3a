"""Under torch.distributed every rank takes the same topology decision: 2 processes, gloo, CPU."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from sparsekernels.dst import DynamicSparsity
from tests.dst.common import METHODS, mlp

STEPS = 12
UPDATE_EVERY = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for method in METHODS:
            model = DDP(mlp(seed=0))
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            # Different seeds per rank on purpose: the engine must adopt rank 0's.
            evo = DynamicSparsity(model, opt, method=method, update_every=UPDATE_EVERY, fraction=0.5, seed=rank)
            initial = [m.clone() for m in _masks(model)]
            g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
            for _ in range(STEPS):
                x, y = torch.randn(16, 32, generator=g), torch.randint(0, 16, (16,), generator=g)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                evo.step()
                opt.zero_grad()
            results[method] = {
                "masks": _masks(model),
                "initial": initial,
                "values": [p.detach().clone() for p in model.parameters()],
                "history": evo.history,
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _masks(model) -> list[torch.Tensor]:
    inner = model.module
    return [inner[0].to_block_mask(), inner[2].to_block_mask()]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_agree_on_topology(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for method in METHODS:
        a, b = r0[method], r1[method]
        assert len(a["history"]) == STEPS // UPDATE_EVERY
        assert any(not torch.equal(m, m0) for m, m0 in zip(a["masks"], a["initial"])), method  # it rewired
        assert all(torch.equal(m, n) for m, n in zip(a["masks"], b["masks"])), method
        assert all(torch.equal(p, q) for p, q in zip(a["values"], b["values"])), method
        assert a["history"] == b["history"], method
