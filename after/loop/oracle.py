"""Oracles answer queries with labels: the manifest's own labels in simulation, or people."""

from __future__ import annotations

import os
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


class HumanOracle:
    """Answers from the run's label store (`after label serve`, `after label import`): a clip
    counts once `min_votes` annotators answered it (see `after.label.store`). The clips it
    answers are taken: the store refuses later changes to them, which the loop would not see."""

    reveals_manifest_labels = False

    def __init__(self, run_dir: str | os.PathLike[str], min_votes: int = 1) -> None:
        from after.label.store import LabelStore

        self.store = LabelStore(run_dir)
        self.min_votes = min_votes

    def label(self, ids: Sequence[str]) -> Answers:
        return self.store.take(ids, self.min_votes)
