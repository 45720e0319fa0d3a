"""The H200 performance model's arithmetic (no compile, no GPU): the dataflow bound and that a
modelled kernel record never beats it."""

from __future__ import annotations

import roofline

from sparsekernels.ops import _aot


def test_dataflow_bound_grows_with_the_block_and_caps_at_the_mma_ceiling():
    bounds = [roofline.dataflow_bound(_aot.Case("dsd", "bf16", b, "4096")) for b in (16, 32, 64, 128)]
    assert [b["flop_per_l2_byte"] for b in bounds] == [16, 32, 64, 128]
    speedups = [b["max_speedup"] for b in bounds]
    assert speedups == sorted(speedups)
    prob = roofline.problem(_aot.Case("dsd", "bf16", 128, "4096"))
    mma_floor = prob["flops"] / (roofline.EFFICIENCY * roofline.PEAK_BF16)
    assert bounds[-1]["min_us"] == mma_floor * 1e6  # block 128: MMA-bound, not L2-bound


def test_a_modelled_record_never_beats_the_dataflow_bound():
    """A synthetic compile record of the best possible tile (every byte of the dense operand
    reused across the whole block, HGMMA, one wave) still predicts no more than the bound."""
    case = _aot.Case("dsd", "bf16", 32, "4096")
    tile_m, b = 256, 32
    record = {
        "compiled": True,
        "num_warps": 8,
        "shared_bytes": 64 * 1024,
        "regs": 128,
        "programs": 132,
        "config": "synthetic",
        "kernel": "m.k",
        "sass": {"hgmma": 8, "hmma": 0},
        # One iteration: a [tile_m, b] x [b, b] dot; loads the dense tile and the value block.
        "loops": [{"dot_mnk": [[tile_m, b, b]], "load_bytes_per_iter": 2 * (tile_m * b + b * b)}],
    }
    pred = roofline.predict(record, roofline.problem(case))
    assert pred["t_us"] >= roofline.dataflow_bound(case)["min_us"]
