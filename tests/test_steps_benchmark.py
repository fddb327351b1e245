"""The `steps` benchmark's arithmetic: the fp32 peak, the CPU clock and the FLOPs counted per step."""

from __future__ import annotations

import math

import pytest

from benchmarks import steps


def test_fp32_peak_is_cores_times_clock_times_32():
    assert steps.fp32_peak_gflops(2, 2.5) == pytest.approx(160.0)
    assert steps.fp32_peak_gflops(1, 3.0) == pytest.approx(96.0)


def test_cpu_clock_is_read_from_the_machine():
    ghz, source = steps.cpu_clock_ghz()
    assert source == "unknown" and math.isnan(ghz) or (0.2 < ghz < 10.0 and "cpuinfo" in source)


def test_flops_per_step_scale_with_the_batch_and_the_cube():
    one = steps.flops_per_step("resnet10", 16, 1)
    two = steps.flops_per_step("resnet10", 16, 2)
    bigger = steps.flops_per_step("resnet10", 32, 1)
    assert one > 0
    assert two == pytest.approx(2 * one, rel=0.02)  # convolutions dominate; the head's products are tiny
    assert bigger == pytest.approx(8 * one, rel=0.1)  # 8x the voxels
