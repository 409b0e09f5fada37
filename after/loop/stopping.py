"""When an active-learning run stops: criteria read what a round ended with and give a reason.

Each criterion is a small object with `reason(end) -> str` ("" to go on), as in small-text's
stopping criteria; the run stops at the first round where one gives a reason, and records it
(`LoopState.stopped_because`). The schedule's end and an exhausted pool always stop a run;
`ALConfig.target_ua` and `ALConfig.stabilize_kappa` add the two optional criteria.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from after.config import ALConfig


@dataclass(frozen=True)
class RoundEnd:
    """What the criteria may read when a round ends."""

    round: int
    num_rounds: int  # entries in the schedule
    num_unlabeled: int  # pool clips neither labeled, pending nor dropped
    dev_ua: float | None  # the round's model on dev (None without dev clips)
    kappa: float | None  # agreement of this round's and the last round's stop-set predictions
    # The round's audit estimate (`after.metrics.audit_estimate`), None without audit labels.
    audit: dict[str, Any] | None = None


class StoppingCriterion(Protocol):
    def reason(self, end: RoundEnd) -> str: ...


class BudgetSpent:
    def reason(self, end: RoundEnd) -> str:
        return "budget spent" if end.round == end.num_rounds - 1 else ""


class PoolExhausted:
    def reason(self, end: RoundEnd) -> str:
        return "pool exhausted" if end.num_unlabeled == 0 else ""


@dataclass(frozen=True)
class TargetUA:
    """Stop once the model reaches `target` UA on dev: dev labels then steer the run, which a
    user turns on knowingly (they are not part of the label budget). A run without a dev split
    reads its audit estimate instead (its point estimate; the reason gives its interval and how
    many audit labels back it)."""

    target: float

    def reason(self, end: RoundEnd) -> str:
        if end.dev_ua is not None:
            if end.dev_ua < self.target:
                return ""
            return f"dev UA {end.dev_ua:.3f} reached the target {self.target}"
        audit = end.audit
        if audit is None or audit["audit_ua"] < self.target:
            return ""
        return (
            f"audit UA {audit['audit_ua']:.3f} (95% CI {audit['audit_ua_lo']:.3f}-"
            f"{audit['audit_ua_hi']:.3f}, {audit['audit_n']} audit labels; no dev split) reached "
            f"the target {self.target}"
        )


@dataclass(frozen=True)
class StablePredictions:
    """Stop once successive rounds' models agree on a held-aside unlabeled stop set (Cohen's
    kappa >= `kappa`; Bloodgood & Vijay-Shanker 2009): more labels no longer change the model's
    mind. Needs no label."""

    kappa: float

    def reason(self, end: RoundEnd) -> str:
        if end.kappa is None or end.kappa < self.kappa:
            return ""
        return f"predictions stable (kappa {end.kappa:.3f} >= {self.kappa})"


def criteria(al: ALConfig) -> list[StoppingCriterion]:
    """The criteria of a run with these settings, in the order their reasons are preferred."""
    found: list[StoppingCriterion] = [BudgetSpent(), PoolExhausted()]
    if al.target_ua is not None:
        found.append(TargetUA(al.target_ua))
    if al.stabilize_kappa is not None:
        found.append(StablePredictions(al.stabilize_kappa))
    return found


def stop_reason(found: list[StoppingCriterion], end: RoundEnd) -> str:
    """The first criterion's reason to stop after this round ("" to go on)."""
    return next((r for c in found if (r := c.reason(end))), "")
