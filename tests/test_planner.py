"""The bootstrap planner: optimal against brute force on small chains, bootstraps where the
fewest ciphertexts are live, steps at the lowest level that serves, and a clear error when a
step cannot fit one bootstrap window."""

from __future__ import annotations

import itertools
import random

import pytest

from privformer.crypto.ckks.planner import PlanError, Step, plan


def _brute_force(steps: list[Step], top: int, start: int, bts: float) -> float:
    """Every (bootstrap?, run level) per step, checked and priced directly."""
    best = float("inf")
    per_step = [[(b, r) for b in (False, True) for r in range(s.depth, top + 1)] for s in steps]
    for choice in itertools.product(*per_step):
        level, cost = start, 0.0
        for step, (boot, run_at) in zip(steps, choice, strict=True):
            if boot:
                level, cost = top, cost + step.live * bts
            if run_at > level:
                break
            cost += step.seconds_at_top * (run_at + 1) / (top + 1)
            level = run_at - step.depth
        else:
            best = min(best, cost)
    return best


def test_plan_is_optimal_on_random_small_chains():
    rng = random.Random(7)
    for _ in range(40):
        top = rng.randint(3, 6)
        steps = [
            Step(f"s{i}", rng.randint(1, top), rng.randint(1, 8), rng.uniform(0.0, 20.0))
            for i in range(rng.randint(1, 4))
        ]
        start = rng.randint(0, top)
        bts = rng.uniform(1.0, 30.0)
        got = plan(steps, top, start, bts)
        assert got.seconds == pytest.approx(_brute_force(steps, top, start, bts))
        level = start  # the plan itself is executable: levels chain and never go negative
        for s in got.steps:
            available = top if s.bootstraps else level
            assert s.step.depth <= s.level_in <= available
            assert s.level_out == s.level_in - s.step.depth
            level = s.level_out


def test_bootstraps_go_where_the_fewest_ciphertexts_are_live():
    # 7 levels per window; an FFN-like chain: 2 narrow ciphertexts, 6 wide, 2 narrow again.
    steps = [
        Step("ffn in", 1, 2, 1.0),
        Step("gelu", 5, 6, 1.0),
        Step("ffn out", 1, 6, 1.0),
        Step("residual + layernorm", 4, 2, 1.0),
    ]
    p = plan(steps, top=7, start=2, bootstrap_seconds=20.0)
    # 11 levels from 2 left: two refreshes are needed; the plan puts both on the 2 narrow
    # ciphertexts (before FFN in, before the norm) where greedy refreshes the 6 wide ones
    # before GELU (and the 2 before the norm): 4 bootstraps instead of 8.
    assert [s.bootstraps for s in p.steps] == [2, 0, 0, 2]
    greedy, level = 0, 2
    for step in steps:
        if level < step.depth:
            greedy, level = greedy + step.live, 7
        level -= step.depth
    assert greedy == 8 and p.bootstraps == 4
    assert "total" in p.table() and "gelu" in p.table()


def test_steps_run_at_the_lowest_level_that_serves():
    steps = [Step("matmul", 1, 1, 100.0), Step("square", 1, 1, 1.0)]
    p = plan(steps, top=7, start=7, bootstrap_seconds=1000.0)
    assert p.bootstraps == 0
    assert p.steps[0].level_in == 2  # dropped from 7: the matmul is priced by its primes
    assert p.seconds == pytest.approx(100.0 * 3 / 8 + 1.0 * 2 / 8)


def test_a_step_deeper_than_a_window_is_refused_by_name():
    with pytest.raises(PlanError, match="gelu consumes 9 levels; a bootstrap gives 7"):
        plan([Step("gelu", 9, 6, 1.0)], top=7, start=7, bootstrap_seconds=20.0)


def test_pairs_per_bootstrap_halve_the_count_of_wide_steps():
    """With complex packing a bootstrap refreshes two ciphertexts: 12 live cost 6, 3 cost 2."""
    steps = [Step("wide", 6, 12), Step("narrow", 6, 3)]
    single = plan(steps, 7, 0, 1.0)
    paired = plan(steps, 7, 0, 1.0, per_bootstrap=2)
    assert [s.bootstraps for s in single.steps] == [12, 3]
    assert [s.bootstraps for s in paired.steps] == [6, 2]
    with pytest.raises(PlanError):
        plan(steps, 7, 0, 1.0, per_bootstrap=0)
