"""Bootstrap placement over a chain of encrypted steps: a dynamic program over (step, level).

The problem (Orion, ASPLOS 2025, for a chain): a computation is a sequence of steps, each
consuming ``depth`` levels, run on ``live`` ciphertexts, and costing more at higher levels
(every prime in the chain is work). Before any step the ciphertexts may be bootstrapped back to
``top`` levels, at ``ceil(live / per_bootstrap) x bootstrap_seconds`` (``per_bootstrap`` = 2
with complex packing, two real ciphertexts in one bootstrap); between steps they may also be
dropped to a lower level for free (a rescale), since a cheaper level is worth it when a step
needs few levels. ``plan`` finds the placement of minimum total seconds: bootstraps land where
the fewest ciphertexts are live, and each step runs at the lowest level that still serves the
rest.

Contract: every step's ``depth`` must fit one bootstrap window (``depth <= top``), or
``PlanError`` names the step; the start level is what the input ciphertexts have.
The cost model is a step's seconds at the top level scaled by (level + 1) / (top + 1): CKKS
multiplications, rotations and rescales are linear in the number of primes.
"""

from __future__ import annotations

from dataclasses import dataclass

from privformer.errors import LevelError


class PlanError(LevelError):
    """No placement exists: a step needs more levels than one bootstrap gives."""


@dataclass(frozen=True)
class Step:
    """One encrypted step of a chain."""

    name: str
    depth: int  # levels it consumes
    live: int  # ciphertexts at its input: what a bootstrap before it refreshes
    seconds_at_top: float = 0.0  # its time when its input sits at the top level


@dataclass(frozen=True)
class PlannedStep:
    step: Step
    bootstraps: int  # bootstraps just before the step (0 or ceil(live / per_bootstrap))
    level_in: int  # the level the step runs at (after any bootstrap or drop)
    level_out: int
    seconds: float  # the step's own modelled time at level_in


@dataclass(frozen=True)
class Plan:
    steps: list[PlannedStep]
    bootstrap_seconds: float

    @property
    def bootstraps(self) -> int:
        return sum(s.bootstraps for s in self.steps)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps) + self.bootstraps * self.bootstrap_seconds

    def table(self) -> str:
        """The plan as a text table: step, level in, level out, bootstraps, modelled seconds."""
        lines = [f"{'step':28s} {'in':>3s} {'out':>3s} {'bootstraps':>10s} {'seconds':>9s}"]
        for s in self.steps:
            lines.append(
                f"{s.step.name:28s} {s.level_in:3d} {s.level_out:3d} {s.bootstraps:10d} "
                f"{s.seconds:9.1f}"
            )
        lines.append(
            f"{'total':28s} {'':3s} {'':3s} {self.bootstraps:10d} {self.seconds:9.1f}"
            f"  (bootstraps at {self.bootstrap_seconds:.1f} s each)"
        )
        return "\n".join(lines)


def plan(
    steps: list[Step], top: int, start: int, bootstrap_seconds: float, per_bootstrap: int = 1
) -> Plan:
    """The minimum-seconds placement of bootstraps (and level drops) over ``steps``;
    ``per_bootstrap``: ciphertexts one bootstrap refreshes (2 with complex packing)."""
    if per_bootstrap < 1:
        raise PlanError(f"per_bootstrap must be at least 1, got {per_bootstrap}")

    def boots(step: Step) -> int:
        return -(-step.live // per_bootstrap)

    for step in steps:
        if step.depth > top:
            raise PlanError(
                f"{step.name} consumes {step.depth} levels; a bootstrap gives {top}: split it "
                "or choose parameters with more levels"
            )
    if not 0 <= start <= top:
        raise PlanError(f"start level {start} is outside 0..{top}")
    inf = float("inf")

    def seconds(step: Step, level: int) -> float:
        return step.seconds_at_top * (level + 1) / (top + 1)

    # best[l]: least seconds to reach the current boundary with l levels left; choice[i][l]:
    # how step i was entered to leave l levels (bootstrapped?, level it ran at, level before).
    best = [inf] * (top + 1)
    best[start] = 0.0
    choices: list[dict[int, tuple[bool, int, int]]] = []
    for step in steps:
        nxt = [inf] * (top + 1)
        choice: dict[int, tuple[bool, int, int]] = {}
        for before, cost in enumerate(best):
            if cost == inf:
                continue
            options = [(False, before, cost)]
            options.append((True, top, cost + boots(step) * bootstrap_seconds))
            for boot, available, paid in options:
                for run_at in range(step.depth, available + 1):  # drop to run_at (free)
                    total = paid + seconds(step, run_at)
                    after = run_at - step.depth
                    if total < nxt[after]:
                        nxt[after] = total
                        choice[after] = (boot, run_at, before)
        best = nxt
        choices.append(choice)
    final = min(range(top + 1), key=lambda level: best[level])
    planned: list[PlannedStep] = []
    level = final
    for step, choice in zip(reversed(steps), reversed(choices), strict=True):
        boot, run_at, before = choice[level]
        planned.append(
            PlannedStep(step, boots(step) if boot else 0, run_at, level, seconds(step, run_at))
        )
        level = before
    return Plan(list(reversed(planned)), bootstrap_seconds)
