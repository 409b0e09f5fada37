"""Oracles answer queries with labels: the manifest's own labels in simulation, or people."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from after.data.manifest import Manifest
from after.errors import AfterError


class Oracle(Protocol):
    """Labels for queried clips. May answer only some (people label at their own pace): the
    loop waits for the rest."""

    def label(self, ids: Sequence[str]) -> dict[str, str]: ...


class SimulatedOracle:
    """Answers with the labels in the manifest: simulation of a labeling team on a labeled
    corpus. Only queried clips are ever revealed to the loop."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def label(self, ids: Sequence[str]) -> dict[str, str]:
        out = {}
        for i in ids:
            label = self.manifest[i].label
            if label is None:
                raise AfterError(
                    f"simulated oracle: clip {i!r} has no label in the manifest; simulation "
                    "needs a labeled pool (or label it with people)"
                )
            out[i] = label
        return out
