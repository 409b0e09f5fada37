from __future__ import annotations

import json
from pathlib import Path

import pytest

from after.data.folds import manifest_digest
from after.data.manifest import Manifest, Utterance
from after.errors import ManifestError


def _utt(i: int, **kw: object) -> Utterance:
    base: dict[str, object] = dict(
        id=f"c_{i}", path=f"/data/{i}.wav", label="anger", speaker="s1", corpus="c"
    )
    base.update(kw)
    return Utterance(**base)  # type: ignore[arg-type]


def test_jsonl_round_trip_keeps_every_field(tmp_path: Path) -> None:
    m = Manifest(
        [
            _utt(1, session="Ses01", duration_s=1.25, votes={"anger": 2, "sadness": 1}),
            _utt(2, label=None, split="train"),
        ]
    )
    path = m.to_jsonl(tmp_path / "m.jsonl")
    back = Manifest.from_jsonl(path)
    assert list(back) == list(m)
    assert back.labels == ["anger"]
    assert back["c_1"].votes == {"anger": 2, "sadness": 1}


def test_relative_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "a", "path": "audio/a.wav", "label": "x", "speaker": "s", "corpus": "c"})
        + "\n"
    )
    assert Manifest.from_jsonl(tmp_path / "m.jsonl")["a"].path == str(tmp_path / "audio" / "a.wav")


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ManifestError, match="duplicate id 'c_1'"):
        Manifest([_utt(1), _utt(1, path="/elsewhere.wav")])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"id": "a", "path": "a.wav", "label": "x", "corpus": "c"}', "'speaker' is missing"),
        (
            '{"id": "a b", "path": "a.wav", "label": "x", "speaker": "s", "corpus": "c"}',
            "whitespace",
        ),
        (
            '{"id": "a", "path": "a.wav", "label": 3, "speaker": "s", "corpus": "c"}',
            "label must be",
        ),
        (
            '{"id": "a", "path": "a.wav", "speaker": "s", "corpus": "c", "colour": 1}',
            "unknown field",
        ),
        ('{"id": "a", "path": "a.wav", "speaker": "s", "corpus": "c", "split": "val"}', "split"),
        (
            '{"id": "a", "path": "a.wav", "speaker": "s", "corpus": "c", "duration_s": "x"}',
            "number",
        ),
        (
            '{"id": "a", "path": "a.wav", "speaker": "s", "corpus": "c", "votes": {"x": -1}}',
            "votes",
        ),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    good = '{"id": "ok", "path": "ok.wav", "label": "x", "speaker": "s", "corpus": "c"}'
    p = tmp_path / "m.jsonl"
    p.write_text(good + "\n" + row + "\n")
    with pytest.raises(ManifestError, match=message) as e:
        Manifest.from_jsonl(p)
    assert f"{p}:2" in str(e.value) or f"{p} (record 2)" in str(e.value)


def test_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="after prepare"):
        Manifest.from_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="not UTF-8"):
        Manifest.from_jsonl(tmp_path / "bin.jsonl")


def test_csv_import(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "path,label,speaker,corpus,duration_s,votes\n"
        'audio/a.flac,anger,spk1,mine,1.5,"{""anger"": 3}"\n'
        "audio/b.flac,,spk2,mine,,\n"
    )
    m = Manifest.from_csv(tmp_path / "m.csv")
    assert m.ids == ["mine_a", "mine_b"]
    assert m["mine_a"].path == str(tmp_path / "audio" / "a.flac")
    assert m["mine_a"].votes == {"anger": 3} and m["mine_a"].duration_s == 1.5
    assert m["mine_b"].label is None and m["mine_b"].duration_s is None


def test_csv_in_a_folder_reached_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "corpus"
    real.mkdir(parents=True)
    (real / "m.csv").write_text("path,label,speaker\naudio/a.flac,anger,s1\n")
    (tmp_path / "data").symlink_to(tmp_path / "disk")
    m = Manifest.from_csv(tmp_path / "data" / "corpus" / "m.csv")
    assert m["corpus_a"].path == str(tmp_path / "data" / "corpus" / "audio" / "a.flac")
    (real / "m.csv").write_text("path,label,speaker\n../../a.flac,anger,s1\n")
    with pytest.raises(ManifestError, match=r"m\.csv:2: path '\.\./\.\./a\.flac' points outside"):
        Manifest.from_csv(tmp_path / "data" / "corpus" / "m.csv")


def test_csv_missing_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,emotion\na.wav,anger\n")
    with pytest.raises(ManifestError, match=r"missing column 'path'; found \['emotion', 'file'\]"):
        Manifest.from_csv(tmp_path / "m.csv")


def test_a_declared_label_set_is_kept_without_any_label(tmp_path: Path) -> None:
    """A pool nobody has labeled yet still knows its classes: the label set is the first line."""
    m = Manifest([Utterance("a", "/x/a.wav", None, "s1", "c")], labels=["sad", "anger"])
    assert m.labels == ["anger", "sad"] and m.label_counts() == {}
    path = m.to_jsonl(tmp_path / "m.jsonl")
    assert path.read_text().splitlines()[0] == '{"label_set": ["sad", "anger"]}'
    back = Manifest.from_jsonl(path)
    assert back.labels == ["anger", "sad"] and back.subset(["a"]).labels == ["anger", "sad"]
    assert manifest_digest(back) != manifest_digest(Manifest(back))  # the set is part of it
    with pytest.raises(ManifestError, match=r"'happy', which is not one of the manifest's labels"):
        Manifest([Utterance("a", "/x/a.wav", "happy", "s1", "c")], labels=["sad", "anger"])
    with pytest.raises(ManifestError, match="a classifier needs 2 or more"):
        Manifest([], labels=["sad"])
    lines = path.read_text().splitlines()
    (tmp_path / "late.jsonl").write_text("\n".join([lines[1], lines[0]]) + "\n")
    with pytest.raises(ManifestError, match=r"late\.jsonl:2: a label set .* must be the first"):
        Manifest.from_jsonl(tmp_path / "late.jsonl")


def test_csv_unknown_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label,speaker,gender\na.wav,anger,s1,f\n")
    with pytest.raises(ManifestError, match=r"m.csv:2: unknown field\(s\) \['gender'\]"):
        Manifest.from_csv(tmp_path / "m.csv")


@pytest.mark.corpus
def test_emodb_csv(emodb_dir: Path) -> None:
    m = Manifest.from_csv(emodb_dir / "manifest.csv")
    assert len(m) == 535 and len(m.speakers) == 10 and len(m.labels) == 7
    assert all(Path(u.path).is_file() for u in m)
    # The copy is cut at 2.0 s: 409 clips sit exactly there (see its README).
    assert sum(u.duration_s == 2.0 for u in m) == 409
