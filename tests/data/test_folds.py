from __future__ import annotations

from pathlib import Path

import pytest

from after.data.folds import PROTOCOLS, Fold, Folds, make_folds
from after.data.manifest import Manifest, Utterance
from after.errors import FoldError, ManifestError


def _corpus(num_speakers: int = 6, per_speaker: int = 8, sessions: bool = True) -> Manifest:
    items = []
    for s in range(num_speakers):
        for i in range(per_speaker):
            items.append(
                Utterance(
                    id=f"c_{s}_{i}",
                    path=f"/x/{s}_{i}.wav",
                    label=None if i == 0 else ("anger", "neutral")[i % 2],  # one unlabeled each
                    speaker=f"spk{s}",
                    corpus="c",
                    session=f"ses{s // 2}" if sessions else None,
                )
            )
    return Manifest(items)


def _assert_speaker_independent(m: Manifest, f: Fold) -> None:
    spk = {part: {m[i].speaker for i in getattr(f, part)} for part in ("train", "dev", "test")}
    assert not spk["train"] & spk["test"], f.name
    assert not spk["train"] & spk["dev"], f.name
    assert not spk["dev"] & spk["test"], f.name
    ids = [*f.train, *f.dev, *f.test]
    assert len(ids) == len(set(ids))
    assert all(m[i].label is not None for i in (*f.dev, *f.test))


@pytest.mark.parametrize("protocol", ["loso", "loso-session", "kfold"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_speaker_on_two_sides(protocol: str, seed: int) -> None:
    m = _corpus()
    folds = make_folds(m, protocol, num_folds=3, seed=seed)  # type: ignore[arg-type]
    for f in folds.folds:
        _assert_speaker_independent(m, f)
    # every labeled clip is tested exactly once across folds
    tested = [i for f in folds.folds for i in f.test]
    assert sorted(tested) == sorted(u.id for u in m if u.label is not None)


def test_loso_shape() -> None:
    m = _corpus()
    folds = make_folds(m, "loso", num_dev_groups=1)
    assert [f.name for f in folds.folds] == m.speakers
    # each speaker is dev exactly once: the rotation is balanced
    assert sorted(g for f in folds.folds for g in f.dev_groups) == m.speakers
    f = folds.get("spk3")
    assert f.test_groups == ("spk3",) and len(f.dev_groups) == 1
    assert f is folds.get(3) is folds.get("3")
    # unlabeled clips of held-out speakers are nowhere in the fold
    held_out = {*f.test_groups, *f.dev_groups}
    unlabeled = {u.id for u in m if u.label is None and u.speaker in held_out}
    assert not unlabeled & {*f.train, *f.dev, *f.test}
    # unlabeled clips of training speakers are in train (usable for pre-training)
    assert {u.id for u in m if u.label is None and u.speaker not in held_out} <= set(f.train)


def test_seed_changes_kfold_but_is_reproducible() -> None:
    m = _corpus(num_speakers=9)
    a = make_folds(m, "kfold", num_folds=3, seed=0)
    assert a == make_folds(m, "kfold", num_folds=3, seed=0)
    assert a.folds != make_folds(m, "kfold", num_folds=3, seed=5).folds
    assert sorted(g for f in a.folds for g in f.test_groups) == m.speakers


def test_no_dev() -> None:
    folds = make_folds(_corpus(), "loso", num_dev_groups=0)
    assert all(f.dev == () for f in folds.folds)


def test_errors() -> None:
    with pytest.raises(FoldError, match="at least 3 speakers"):
        make_folds(_corpus(num_speakers=2), "loso")
    with pytest.raises(FoldError, match="needs a session"):
        make_folds(_corpus(sessions=False), "loso-session")
    with pytest.raises(FoldError, match="num_folds"):
        make_folds(_corpus(), "kfold", num_folds=7)
    with pytest.raises(FoldError, match="no official partition"):
        make_folds(_corpus(), "official")
    with pytest.raises(FoldError, match="unknown protocol"):
        make_folds(_corpus(), "random")  # type: ignore[arg-type]
    with pytest.raises(FoldError, match="no fold 'spk99'"):
        make_folds(_corpus(), "loso").get("spk99")
    assert set(PROTOCOLS) == {"loso", "loso-session", "kfold", "official"}


def test_session_folds_refuse_a_speaker_spanning_sessions() -> None:
    items = list(_corpus())
    items.append(Utterance("c_x", "/x/x.wav", "anger", "spk0", "c", session="ses2"))
    with pytest.raises(FoldError, match="spk0"):
        make_folds(Manifest(items), "loso-session")


def test_official_split() -> None:
    items = [
        Utterance(f"c_{i}", f"/x/{i}.wav", "anger", f"s{i}", "c", split=split)
        for i, split in enumerate(["train", "train", "dev", "test", "test"])
    ]
    items.append(Utterance("c_shared", "/x/s.wav", "anger", "s0", "c", split="test"))
    with pytest.raises(FoldError, match="s0"):
        make_folds(Manifest(items), "official")
    f = make_folds(Manifest(items), "official", allow_speaker_overlap=True).folds[0]
    assert (f.train, f.dev, f.test) == (("c_0", "c_1"), ("c_2",), ("c_3", "c_4", "c_shared"))


def test_json_round_trip_and_manifest_check(tmp_path: Path) -> None:
    m = _corpus()
    folds = make_folds(m, "kfold", num_folds=3, seed=4)
    path = folds.to_json(tmp_path / "folds.json")
    assert Folds.from_json(path, m) == folds
    other = Manifest(u for u in m if u.speaker != "spk0")
    with pytest.raises(ManifestError, match="another manifest"):
        Folds.from_json(path, other)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ManifestError, match="not a valid folds file"):
        Folds.from_json(tmp_path / "bad.json")


@pytest.mark.corpus
def test_emodb_loso_is_speaker_independent(emodb_dir: Path) -> None:
    m = Manifest.from_csv(emodb_dir / "manifest.csv")
    folds = make_folds(m, "loso")
    assert len(folds) == 10
    for f in folds.folds:
        _assert_speaker_independent(m, f)
        assert len(f.train) + len(f.dev) + len(f.test) == 535


def test_a_speaker_id_in_two_corpora_is_not_merged_silently() -> None:
    """Two corpora numbering their speakers alike ("spk0") would become one person in the folds;
    that is refused unless the caller says they are the same person."""
    a = _corpus(num_speakers=4)
    b = [
        Utterance(f"d_{u.id}", u.path, u.label, u.speaker, "other", u.session)
        for u in _corpus(num_speakers=2)
    ]
    both = Manifest([*a, *b])
    with pytest.raises(FoldError, match=r"2 speaker id\(s\) appear in several corpora.*'spk0'"):
        make_folds(both, "loso")
    with pytest.raises(FoldError, match="session"):
        make_folds(both, "loso-session")
    folds = make_folds(both, "loso", shared_speakers=True)
    assert len(folds) == 4  # spk0 and spk1 each one person across both corpora
