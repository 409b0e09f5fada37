"""Speaker-independent train/dev/test folds.

Protocols:

- `loso`: leave one speaker out. One fold per speaker: that speaker is the test set.
- `loso-session`: leave one session out (IEMOCAP's usual protocol): one fold per `session`.
- `kfold`: leave k speakers out. Speakers are shuffled with `seed` and cut into `num_folds` groups.
- `official`: the corpus's own partition (`Utterance.split`), for corpora that publish one.

In every fold the dev speakers are drawn from the training speakers (the `num_dev_groups` groups
that follow the test groups in a seeded cyclic order, so each group serves as dev equally often) and
removed from training. Dev and test hold labeled clips only. Unlabeled clips join the training side
when their speaker trains; unlabeled clips of dev or test speakers are left out of the fold
altogether, so no audio of a held-out speaker can reach pre-training, cold start or selection.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from after.data.manifest import Manifest, Utterance, shared_audio
from after.errors import FoldError, ManifestError, cut, quoted
from after.io import atomic_write_json, check_file_name, read_text_file

Protocol = Literal["loso", "loso-session", "kfold", "official"]
PROTOCOLS: tuple[str, ...] = ("loso", "loso-session", "kfold", "official")
_ID_FIELDS = ("train", "dev", "test", "test_groups", "dev_groups")


@dataclass(frozen=True)
class Fold:
    """One split of utterance ids. `test_groups`/`dev_groups` are the held-out speakers or
    sessions."""

    name: str
    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]
    test_groups: tuple[str, ...]
    dev_groups: tuple[str, ...]

    def __post_init__(self) -> None:
        # A fold's name goes into file names (evaluation_FOLD_test.json, runs/FOLD_seed0.json):
        # LOSO folds are named after a speaker or session id, which comes from the manifest.
        check_file_name(
            self.name,
            "fold name",
            "it comes from a speaker or session id (leave-one-out folds are named after them): "
            "give speakers ids without '/', '..' or control characters in the manifest",
            FoldError,
        )


@dataclass(frozen=True)
class Folds:
    """All folds of one protocol over one manifest, plus what is needed to reproduce them."""

    protocol: str
    seed: int
    num_dev_groups: int
    manifest_digest: str
    folds: tuple[Fold, ...]

    def __len__(self) -> int:
        return len(self.folds)

    def get(self, fold: int | str) -> Fold:
        """A fold by index or by name (e.g. `3` or `"emodb_03"`)."""
        if isinstance(fold, int) or fold.isdigit():
            i = int(fold)
            if 0 <= i < len(self.folds):
                return self.folds[i]
        else:
            for f in self.folds:
                if f.name == fold:
                    return f
        names = cut(", ".join(f.name for f in self.folds), 400)
        raise FoldError(
            f"no fold {quoted(fold)}; use an index 0..{len(self.folds) - 1} or one of: {names}"
        )

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, asdict(self))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], manifest: Manifest | None = None) -> Folds:
        """Read folds; with `manifest`, check they were made from it (every id present)."""
        file = Path(path)
        text = read_text_file(file, "create it with `after folds`", ManifestError)
        try:
            raw = json.loads(text)
            folds = cls(
                protocol=raw["protocol"],
                seed=int(raw["seed"]),
                num_dev_groups=int(raw["num_dev_groups"]),
                manifest_digest=raw["manifest_digest"],
                folds=tuple(
                    Fold(
                        name=str(f["name"]),
                        **{k: tuple(map(str, f[k])) for k in _ID_FIELDS},
                    )
                    for f in raw["folds"]
                ),
            )
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            reason = quoted(str(e) or type(e).__name__)
            raise ManifestError(
                f"{file}: not a valid folds file ({reason}); re-create it with `after folds`"
            ) from None
        except FoldError as e:
            raise ManifestError(f"{file}: {e}; then re-create it with `after folds`") from None
        if manifest is not None:
            for f in folds.folds:
                missing = [i for i in (*f.train, *f.dev, *f.test) if i not in manifest]
                if missing:
                    raise ManifestError(
                        f"{file}: fold {f.name} names {len(missing)} id(s) not in the manifest "
                        f"(e.g. {missing[0]!r}); the folds were made from another manifest, "
                        "re-create them with `after folds`"
                    )
        return folds


def manifest_digest(manifest: Manifest) -> str:
    """A short hash of ids, speakers and labels (and a declared label set): changes when the
    folds would, or the classes."""
    h = hashlib.sha256()
    for u in sorted(manifest, key=lambda u: u.id):
        h.update(f"{u.id}\t{u.speaker}\t{u.session}\t{u.label}\t{u.split}\n".encode())
    if manifest.label_set is not None:
        h.update(("label_set\t" + "\t".join(manifest.label_set)).encode())
    return h.hexdigest()[:16]


def make_folds(
    manifest: Manifest,
    protocol: Protocol = "loso",
    *,
    num_folds: int = 5,
    num_dev_groups: int = 1,
    seed: int = 0,
    allow_speaker_overlap: bool = False,
    shared_speakers: bool = False,
) -> Folds:
    """Build folds. `num_folds` is used by `kfold` only; `num_dev_groups` speakers (or sessions)
    per fold go to dev (0: no dev set). `allow_speaker_overlap` admits an `official` partition that
    shares speakers between train and test (MELD's does); other protocols never do. A speaker (or
    session) id found in several corpora is refused unless `shared_speakers` says that it is one
    person: two corpora often number their speakers alike, and merging them would be silent.
    """
    if protocol not in PROTOCOLS:
        raise FoldError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    if num_dev_groups < 0:
        raise FoldError("num_dev_groups must be >= 0")
    if len(manifest) and not any(u.label is not None for u in manifest):
        raise FoldError(
            "no clip of the manifest has a label, and dev and test sets hold labeled clips only, "
            "so every fold would have an empty test set. Folds are not needed: run active "
            "learning on the whole manifest with people labeling (after run --manifest M "
            "--oracle human --audit 40 --out RUN, no --fold); its audit set, labeled by the same "
            "people, estimates the accuracy"
        )
    if protocol == "official":
        folds: list[Fold] = [_official(manifest)]
    else:
        by_session = protocol == "loso-session"
        if by_session and (missing := [u.id for u in manifest if u.session is None]):
            raise FoldError(
                f"protocol loso-session needs a session for every clip; {len(missing)} have none "
                f"(e.g. {missing[0]!r}). Use loso or kfold instead"
            )
        groups = {u.id: (u.session if by_session else u.speaker) or "" for u in manifest}
        if not shared_speakers:
            _check_one_corpus_per_group(manifest, groups, "session" if by_session else "speaker")
        names = sorted(set(groups.values()))
        if protocol == "kfold":
            if not 2 <= num_folds <= len(names):
                raise FoldError(
                    f"kfold needs 2 <= num_folds <= number of speakers ({len(names)}); "
                    f"got {num_folds}"
                )
            order = [str(g) for g in np.random.default_rng(seed).permutation(names)]
            chunks = [list(c) for c in np.array_split(np.array(order, dtype=object), num_folds)]
        else:
            order = [str(g) for g in np.random.default_rng(seed).permutation(names)]
            chunks = [[g] for g in names]
        if len(names) < 2 + num_dev_groups:
            kind = "sessions" if by_session else "speakers"
            raise FoldError(
                f"{protocol} with {num_dev_groups} dev group(s) needs at least "
                f"{2 + num_dev_groups} {kind}; the manifest has {len(names)} ({', '.join(names)})"
            )
        folds = [
            _fold(
                manifest,
                groups,
                order,
                test,
                num_dev_groups,
                test[0] if len(chunks) == len(names) else f"fold{i}",
            )
            for i, test in enumerate(chunks)
        ]
    _check_one_side_per_file(manifest, protocol)
    for f in folds:
        _check_independent(manifest, f, allow_overlap=allow_speaker_overlap)
    return Folds(protocol, seed, num_dev_groups, manifest_digest(manifest), tuple(folds))


def _check_one_corpus_per_group(manifest: Manifest, groups: dict[str, str], kind: str) -> None:
    corpora: dict[str, set[str]] = {}
    for u in manifest:
        corpora.setdefault(groups[u.id], set()).add(u.corpus)
    shared = sorted((g, sorted(c)) for g, c in corpora.items() if len(c) > 1)
    if shared:
        name, where = shared[0]
        raise FoldError(
            f"{len(shared)} {kind} id(s) appear in several corpora, e.g. {quoted(name)} in "
            f"{', '.join(where)}; folds would take them for one {kind}. If they differ, give "
            f"them distinct ids (e.g. {where[0]}_{name}); if they are the same, pass "
            "--shared-speakers"
        )


def _fold(
    manifest: Manifest,
    groups: dict[str, str],
    order: list[str],
    test: list[str],
    num_dev_groups: int,
    name: str,
) -> Fold:
    # The dev groups follow the test groups in the seeded cyclic `order`: each group is dev equally
    # often across LOSO folds, and which one is deterministic for the seed.
    last = max(order.index(g) for g in test)
    after_test = [g for g in order[last + 1 :] + order[: last + 1] if g not in test]
    dev = after_test[:num_dev_groups]
    train, dev_ids, test_ids = [], [], []
    for u in manifest:
        g = groups[u.id]
        if g in test:
            if u.label is not None:
                test_ids.append(u.id)
        elif g in dev:
            if u.label is not None:
                dev_ids.append(u.id)
        else:
            train.append(u.id)
    return Fold(
        name, tuple(train), tuple(dev_ids), tuple(test_ids), tuple(sorted(test)), tuple(dev)
    )


def _official(manifest: Manifest) -> Fold:
    parts: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for u in manifest:
        if u.split is not None and (u.split == "train" or u.label is not None):
            parts[u.split].append(u.id)
    if not parts["train"] or not parts["test"]:
        raise FoldError(
            "protocol official needs clips with split 'train' and 'test' in the manifest; "
            "this corpus has no official partition: use loso or kfold"
        )
    return Fold(
        "official", tuple(parts["train"]), tuple(parts["dev"]), tuple(parts["test"]), (), ()
    )


def _check_one_side_per_file(manifest: Manifest, protocol: str) -> None:
    """Refuse an audio file that backs rows of several speakers (sessions for loso-session,
    splits for official): the folds would put the same audio in training and test."""

    def side(u: Utterance) -> str | None:
        if protocol == "official":
            return u.split
        return u.session if protocol == "loso-session" else u.speaker

    crossing = [r for r in shared_audio(manifest) if len({side(u) for u in r}) > 1]
    if crossing:
        kind = {"official": "splits", "loso-session": "sessions"}.get(protocol, "speakers")
        rows = crossing[0]
        raise FoldError(
            f"{len(crossing)} audio file(s) back rows of several {kind}, e.g. "
            f"{quoted(rows[0].path)} for {len(rows)} rows (ids "
            f"{', '.join(quoted(u.id, 40) for u in rows[:3])}): the folds would put the same "
            "audio in training and test. Give each row its own file (after validate lists them)"
        )


def _speakers(manifest: Manifest, ids: Iterable[str]) -> set[str]:
    return {manifest[i].speaker for i in ids}


def _check_independent(manifest: Manifest, fold: Fold, *, allow_overlap: bool) -> None:
    """Fail if any speaker is on two sides of the fold."""
    train, dev, test = (_speakers(manifest, ids) for ids in (fold.train, fold.dev, fold.test))
    shared = (train & test) | (dev & test) | (train & dev)
    if shared and not allow_overlap:
        raise FoldError(
            f"fold {fold.name}: speaker(s) {sorted(shared)[:5]} appear on two sides of the split, "
            "so it would not be speaker-independent. For an official partition that shares "
            "speakers (e.g. MELD), pass --allow-speaker-overlap and report it; otherwise fix "
            "the speaker ids"
        )
    if not fold.train or not fold.test:
        raise FoldError(f"fold {fold.name}: empty train or test set; check the labels and speakers")
