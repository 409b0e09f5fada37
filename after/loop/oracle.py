"""Oracles answer queries with labels: `SimulatedOracle` reveals the manifest's own labels; people
answer through `after.label.store.HumanOracle`, which reads the label store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from after.data.manifest import Manifest
from after.errors import AfterError


@dataclass(frozen=True)
class Answers:
    """An oracle's answers about some queried clips.

    labels: the decided label per clip. votes: label counts per clip, where known (soft labels
    for training). dropped: clips nobody could label, taken out of the pool for good. A clip in
    none of these is still waiting."""

    labels: dict[str, str] = field(default_factory=dict)
    votes: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


class Oracle(Protocol):
    """Labels for queried clips. May answer only some (people label at their own pace): the
    loop waits for the rest. `reveals_manifest_labels`: the answers are the manifest's own
    labels, so only labeled clips can be queried (else any clip of the pool can)."""

    reveals_manifest_labels: bool

    def label(self, ids: Sequence[str]) -> Answers: ...


class SimulatedOracle:
    """Answers with the labels (and annotator votes) in the manifest: simulation of a labeling
    team on a labeled corpus. Only queried clips are ever revealed to the loop."""

    reveals_manifest_labels = True

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def label(self, ids: Sequence[str]) -> Answers:
        answers = Answers()
        for i in ids:
            u = self.manifest[i]
            if u.label is None:
                raise AfterError(
                    f"simulated oracle: clip {i!r} has no label in the manifest; simulation "
                    "needs a labeled pool (or label it with people: after run --oracle human)"
                )
            answers.labels[i] = u.label
            if u.votes:
                answers.votes[i] = dict(u.votes)
        return answers
