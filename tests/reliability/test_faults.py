"""The third pass: names from a manifest that would climb out of their folder, two servers on one
run, look-alike annotator names, disks that fill up and run folders, model folders and caches that
are damaged or not what they seem, manifests whose rows share audio, and round trips and messages
(formula-guarded CSV cells, Ctrl-C, a store held exclusively, megabyte ids). Each ends in one clear
line that names the file and the fix, never a traceback, and loses nothing."""

from __future__ import annotations

import builtins
import errno
import json
import os
import pickle
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import unicodedata
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from after.cache import cache_folder
from after.config import ALConfig, TrainConfig
from after.data.folds import Folds, make_folds
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError, FoldError, ManifestError
from after.label import files
from after.label.app import create_app, serving
from after.label.store import LabelStore, NameInUse, agreement, check_annotator
from after.loop import state as loop_state
from after.loop.folder import RunFolder
from after.loop.runner import Run, run_loop, start_run
from after.loop.state import LoopState
from after.models.classifier import load_classifier, new_classifier
from after.testing.cli import invoke

SR = 16_000


def _count(tally: dict[str, int], key: str, n: int = 1) -> None:
    tally[key] = tally.get(key, 0) + n


def _people(corpus: tuple[Manifest, Path, Path], out: Path) -> tuple[Run, LoopState]:
    """A run labeled by people, waiting for the 6 queries of round 0."""
    m, manifest, folds = corpus
    al = ALConfig(schedule=("6", "10"), cold_start="random", oracle="human")
    fold = Folds.from_json(folds, m).get(0)
    train = TrainConfig(epochs=1, batch_size=8)
    run = Run(m, str(manifest), str(folds), fold, "scratch:tiny", al, train, out, None)
    return run, run_loop(run, start_run(run))


@pytest.fixture
def people(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> tuple[Run, LoopState]:
    return _people(corpus, tmp_path / "run")


def _after(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`after ARGS` in a new process with at most 4 GB of memory: a regression that reads a
    device for ever fails the test instead of filling the machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run(
        [sys.executable, "-m", "after", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


# ---- 1. names from a manifest never climb out of their folder ----------------------------------

HOSTILE_SPEAKERS = ["x/../../../escaped", "..", "a\\b", "spk\u202e", "/abs"]


@pytest.mark.parametrize("speaker", HOSTILE_SPEAKERS)
def test_a_speaker_id_that_would_name_a_path_is_refused(
    speaker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    rows = [
        Utterance(f"{s}_{i}", f"/x/{s}_{i}.wav", "anger", s, "c")
        for s in ("s1", "s2", speaker)
        for i in range(3)
    ]
    manifest = Manifest(rows).to_jsonl(tmp_path / "m.jsonl")
    with pytest.raises(FoldError, match="cannot name a file"):
        make_folds(Manifest.from_jsonl(manifest), "loso", num_dev_groups=0)
    code, text = invoke(["folds", str(manifest), "--out", str(tmp_path / "f.json")], capsys)
    assert code == 2 and "fold name" in text and "speaker" in text, text
    assert not (tmp_path / "f.json").exists()
    _count(tally, "path_escapes")


def test_a_folds_file_with_a_climbing_fold_name_is_refused(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`after evaluate --fold` and `after cv --out D` put the fold's name in file names."""
    m, manifest, folds = corpus
    raw = json.loads(folds.read_text())
    raw["folds"][0]["name"] = "../../outside"
    edited = tmp_path / "deep" / "er" / "folds.json"
    edited.parent.mkdir(parents=True)
    edited.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=r"folds.json: fold name '\.\./\.\./outside'"):
        Folds.from_json(edited, m)
    out = tmp_path / "deep" / "er" / "cv"
    args = ["cv", "--manifest", str(manifest), "--folds", str(edited), "--out", str(out)]
    code, text = invoke([*args, "--backbone", "scratch:tiny", "--epochs", "1"], capsys)
    assert code == 2 and "cannot name a file" in text, text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "er", "folds.json"]


def test_a_backbone_spec_never_takes_the_cache_folder_out_of_the_cache(
    tmp_path: Path, tally: dict[str, int]
) -> None:
    root = tmp_path / "cache"
    for name in ("frozen:../../../escaped@3", "frozen:/abs/model@2", "..", "a\x00b"):
        folder = cache_folder(root, name, "v1")
        assert folder.parent == root and folder.resolve().parent == root.resolve(), folder
        _count(tally, "path_escapes")


# ---- 2. one labeling server per run -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_second_server_on_a_run_is_refused_with_the_first_ones_address(
    people: tuple[Run, LoopState], tally: dict[str, int]
) -> None:
    run, _ = people
    first_port, second_port = _free_port(), _free_port()
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "after",
            "label",
            "serve",
            str(run.run_dir),
            "--port",
            str(first_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{first_port}/api/session", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and first.poll() is None, "no first server"
                time.sleep(0.3)
        second = _after("label", "serve", str(run.run_dir), "--port", str(second_port))
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"localhost:{first_port}" in second.stderr and "annotators:" not in second.stdout
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: the server stops cleanly
        _, stderr = first.communicate(timeout=30)
    assert first.returncode in (0, 130) and "Traceback" not in stderr, stderr
    refused = pytest.raises(AfterError, match="serves this run already, at http://localhost:1/")
    # The first one's lock went with it; a server in this process holds it now.
    with serving(run.run_dir, "http://localhost:1/"), refused, serving(run.run_dir, "x"):
        pass
    _count(tally, "second_servers")


# ---- 3. look-alike annotator names ---------------------------------------------------------------


def test_a_name_in_nfc_and_nfd_is_one_annotator(tmp_path: Path, tally: dict[str, int]) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    assert nfc != nfd and check_annotator(nfd) == nfc
    store = LabelStore(tmp_path)
    store.put("a", nfc, "anger", 0, key="browser-1")
    with pytest.raises(NameInUse):
        store.put("b", nfd, "anger", 0, key="browser-2")  # the same name, from another browser
    store.put("b", nfd, "joy", 0, key="browser-1")
    store.put("a", "Ana", "anger", 0)
    store.put("a", nfd, "joy", 0)  # a re-label, not a second rater
    assert {a.annotator for a in store.annotations()} == {nfc, "Ana"}
    assert agreement(store.annotations(), ["anger", "joy"])["annotators"] == 2
    assert store.undo(nfd, 0) == "a"
    _count(tally, "look_alike_names")


# ---- 4. full disks, read-only and damaged run folders -------------------------------------------

WRONG_STATES: list[Any] = [
    [],
    "state",
    {"config_hash": "x", "seed": 0, "schema_version": 1, "labeled": []},
    {"config_hash": "x", "seed": "0", "schema_version": 1},
    {"config_hash": "x", "seed": 0, "schema_version": 1, "phase": "labelling"},
    {"config_hash": "x", "seed": 0, "schema_version": 1, "pending": [1, 2]},
    {"config_hash": "x", "seed": 0, "schema_version": 1, "extra": True},
    {"seed": 0, "schema_version": 1},
    {"config_hash": "x", "seed": 0, "schema_version": 1, "labeled": {"a": "zero"}},
    {"config_hash": "x", "seed": 0, "schema_version": 1, "rounds": [1]},
]


def test_a_state_file_of_another_shape_is_named(
    people: tuple[Run, LoopState], capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    run, _ = people
    path = run.run_dir / "state.json"
    good = path.read_text()
    assert set(loop_state._JSON_TYPES) == set(LoopState.__dataclass_fields__)
    for wrong in WRONG_STATES:
        path.write_text(json.dumps(wrong))
        with pytest.raises(AfterError, match=r"state\.json: not the state of a run"):
            LoopState.load(run.run_dir)
        for args in (["run", "--resume", str(run.run_dir)], ["label", "status", str(run.run_dir)]):
            code, text = invoke(args, capsys)
            assert code == 2 and "state.json" in text and "backup" in text, text
        _count(tally, "faults")
    path.write_text(good)
    assert LoopState.load(run.run_dir).pending


def test_a_config_file_of_another_shape_is_named(
    people: tuple[Run, LoopState], capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    run, _ = people
    path = run.run_dir / "config.json"
    good = json.loads(path.read_text())
    wrongs = [[], "run", {**good, "al": []}, {**good, "train": {"epochs": 1, "x": 2}}, {"a": 1}]
    for wrong in wrongs:
        path.write_text(json.dumps(wrong))
        for args in (["run", "--resume", str(run.run_dir)], ["label", "status", str(run.run_dir)]):
            code, text = invoke(args, capsys)
            assert code == 2 and "config.json" in text, text
        _count(tally, "faults")


def test_a_truncated_queries_file_is_named_by_export_import_and_the_page(
    people: tuple[Run, LoopState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, state = people
    path = RunFolder(run.run_dir).queries(state.round)
    good = path.read_text()
    answers = tmp_path / "answers.csv"
    answers.write_text(f"clip_id,label,annotator\n{state.pending[0]},anger,ann\n")
    for damaged in (good[: len(good) // 2], "[]", '{"ids": "abc", "labels": []}'):
        path.write_text(damaged)
        for args in (
            ["label", "export", str(run.run_dir), "--out", str(tmp_path / "out")],
            ["label", "import", str(run.run_dir), str(answers)],
        ):
            code, text = invoke(args, capsys)
            assert code == 2 and "round_000.json" in text and "backup" in text, text
        r = TestClient(create_app(run.run_dir), base_url="http://127.0.0.1").get("/api/session")
        assert r.status_code == 503 and "round_000.json" in r.json()["error"]
    assert LabelStore(run.run_dir).annotations() == []  # the import stored nothing
    path.write_text(good)
    assert invoke(["label", "import", str(run.run_dir), str(answers)], capsys)[0] == 0


def test_a_run_folder_that_cannot_be_written_says_so(
    people: tuple[Run, LoopState],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tally: dict[str, int],
) -> None:
    """Tests run as root, where chmod stops nothing: the open fails as it does on a read-only
    file system, and a folder stands where a file should be."""
    run, state = people
    real_open = builtins.open

    def read_only(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if str(file).startswith(str(run.run_dir)) and set(mode) & set("wa+x"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", read_only)
        code, text = invoke(["run", "--resume", str(run.run_dir)], capsys)
    assert code == 2 and "run.lock: Read-only file system" in text and "writable" in text, text
    store = RunFolder(run.run_dir).store
    LabelStore(run.run_dir)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    store.mkdir()  # where the label store should be
    answers = run.run_dir.parent / "a.csv"
    answers.write_text(f"clip_id,label,annotator\n{state.pending[0]},anger,ann\n")
    code, text = invoke(["label", "import", str(run.run_dir), str(answers)], capsys)
    assert code == 2 and "labels.sqlite" in text and "writable" in text, text
    _count(tally, "faults", 2)


def test_a_full_disk_while_a_model_is_saved_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tally: dict[str, int]
) -> None:
    clf = new_classifier("scratch:tiny", ["anger", "joy"])
    out = tmp_path / "model"
    real_open = builtins.open

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    def full(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_open(file, mode, *args, **kw)
        return Full(f) if str(file).startswith(str(out)) and "w" in mode else f

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", full)
        with pytest.raises(AfterError, match="No space left on device; free some space"):
            clf.save(out)
    _count(tally, "faults")


# ---- 5. model folders ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "good"
    new_classifier("scratch:tiny", ["anger", "joy"]).save(out)
    return out


def _copy(saved: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


class _Marker:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def _truncated(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _json_edit(name: str, edit: Any) -> Any:
    def make(folder: Path) -> None:
        path = folder / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return make


def _three_labels(config: dict[str, Any]) -> dict[str, Any]:
    config["id2label"] = {"0": "anger", "1": "joy", "2": "sadness"}
    config["label2id"] = {"anger": 0, "joy": 1, "sadness": 2}
    return config


# case -> (how to damage a good model folder, the file the message must name)
DAMAGED_MODELS: dict[str, tuple[Any, str]] = {
    "truncated weights": (lambda d: _truncated(d / "model.safetensors"), "model.safetensors"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    "weights are /dev/zero": (
        lambda d: (
            (d / "model.safetensors").unlink(),
            (d / "model.safetensors").symlink_to("/dev/zero"),
        ),
        "model.safetensors: a device",
    ),
    "config is /dev/zero": (
        lambda d: ((d / "config.json").unlink(), (d / "config.json").symlink_to("/dev/zero")),
        "config.json: a device",
    ),
    "weights are a FIFO": (
        lambda d: ((d / "model.safetensors").unlink(), os.mkfifo(d / "model.safetensors")),
        "model.safetensors: a FIFO",
    ),
    "damaged header": (
        lambda d: (d / "model.safetensors").write_bytes(
            (100).to_bytes(8, "little") + b"{" * 100 + b"\0" * 50
        ),
        "model.safetensors",
    ),
    "labels do not fit the head": (_json_edit("config.json", _three_labels), "config.json"),
    "labels differ from after_model.json": (
        _json_edit("after_model.json", lambda i: {**i, "labels": ["joy", "anger"]}),
        "after_model.json",
    ),
    "damaged after_model.json": (
        lambda d: (d / "after_model.json").write_text('{"kind": "transf'),
        "after_model.json",
    ),
    "after_model.json of another shape": (
        lambda d: (d / "after_model.json").write_text('{"kind": 3, "labels": "ab"}'),
        "after_model.json",
    ),
    "features model without weights": (
        lambda d: (
            (d / "model.safetensors").unlink(),
            (d / "after_model.json").write_text(
                json.dumps({"kind": "features", "backbone": "egemaps", "labels": ["a", "b"]})
            ),
        ),
        "model.safetensors",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED_MODELS))
def test_a_damaged_model_folder_is_refused_naming_the_file(
    case: str, saved: Path, tmp_path: Path, tally: dict[str, int]
) -> None:
    damage, named = DAMAGED_MODELS[case]
    folder = _copy(saved, tmp_path)
    damage(folder)
    with pytest.raises(AfterError) as e:
        load_classifier(folder)
    assert named in str(e.value) and len(str(e.value)) < 600, str(e.value)
    assert "\n" not in str(e.value)
    _count(tally, "faults")


def test_a_features_model_whose_labels_do_not_fit_its_head_is_refused(
    tmp_path: Path, tally: dict[str, int]
) -> None:
    out = new_classifier("egemaps", ["anger", "joy"]).save(tmp_path / "model")
    info = json.loads((out / "after_model.json").read_text())
    info["labels"] = ["anger", "joy", "sadness"]
    (out / "after_model.json").write_text(json.dumps(info))
    with pytest.raises(AfterError, match=r"model.safetensors: does not fit the 3 labels"):
        load_classifier(out)
    _count(tally, "faults")


def test_a_pickled_model_is_refused_never_run(
    saved: Path, tmp_path: Path, tally: dict[str, int]
) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(AfterError, match=r"pytorch_model.bin: weights in a pickle"):
        load_classifier(folder)
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(SR) / 10), SR)
    r = _after("predict", str(wav), "--model", str(folder))
    assert r.returncode == 2 and "pytorch_model.bin" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    _count(tally, "faults")


def test_predict_never_reads_a_device_in_a_model_folder(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(SR) / 10), SR)
    r = _after("predict", str(wav), "--model", str(folder), timeout=120)
    assert r.returncode == 2 and "model.safetensors: a device" in r.stderr, r.stderr


# ---- 6. feature cache entries that are not files ------------------------------------------------


def test_cache_entries_that_are_not_files_are_misses(tmp_path: Path, tally: dict[str, int]) -> None:
    """Run in a new process with bounded memory: a regression reads /dev/zero until it dies."""
    script = textwrap.dedent(
        f"""
        import os, resource, numpy as np, soundfile as sf
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from after.cache import ArrayCache
        from after.data.manifest import Utterance
        sf.write({str(tmp_path / "a.wav")!r}, np.zeros(1600) + 0.1, 16000)
        u = Utterance("a", {str(tmp_path / "a.wav")!r}, "anger", "s", "c")
        cache = ArrayCache({str(tmp_path / "cache")!r})
        cache.put(u, np.ones(4, dtype=np.float32))
        assert cache.get(u).tolist() == [1, 1, 1, 1]
        entry = cache.path(u.id)
        entry.unlink(); entry.symlink_to("/dev/zero")
        print(cache.get(u))
        entry.unlink(); os.mkfifo(entry)
        print(cache.get(u))
        entry.unlink(); cache.put(u, np.ones(4, dtype=np.float32))
        os.truncate(entry, 8 << 30)  # a regular file of 8 GB (sparse): read only its header
        print(cache.get(u))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["None"] * 3, r.stderr[-2000:]
    _count(tally, "faults", 3)


# ---- 7. rows that share audio -------------------------------------------------------------------


def test_rows_sharing_audio_across_speakers_are_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    """400 rows over 4 audio files under 8 speakers: the same audio in train and test."""
    for k in range(4):
        sf.write(tmp_path / f"f{k}.wav", 0.3 * np.sin(np.arange(SR) * (k + 1) / 20), SR)
    rows = ["id,path,label,speaker"] + [
        f"c{i},f{i % 4}.wav,{('anger', 'joy')[i % 2]},s{i % 8}" for i in range(400)
    ]
    csv_file = tmp_path / "clips.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    manifest = tmp_path / "m.jsonl"
    code, text = invoke(
        ["prepare", "csv", "--data-dir", str(csv_file), "--out", str(manifest)], capsys
    )
    assert code == 0 and "warning: 4 audio file(s) back 400 rows" in text, text
    for args in (["validate", str(manifest)], ["stats", str(manifest)]):
        code, text = invoke(args, capsys)
        assert "warning: 4 audio file(s) back 400 rows, 4 of them under several speakers" in text
    code, text = invoke(["folds", str(manifest), "--out", str(tmp_path / "f.json")], capsys)
    assert code == 2 and "back rows of several speakers" in text, text
    assert not (tmp_path / "f.json").exists()
    m = Manifest.from_jsonl(manifest)
    with pytest.raises(FoldError, match="same audio in training and test"):
        make_folds(m, "kfold", num_folds=2)
    _count(tally, "shared_audio", 5)


def test_rows_of_one_speaker_sharing_audio_are_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sf.write(tmp_path / "one.wav", 0.3 * np.sin(np.arange(SR) / 20), SR)
    for k in range(3):
        sf.write(tmp_path / f"s{k}.wav", 0.3 * np.sin(np.arange(SR) * (k + 2) / 20), SR)
    rows = [Utterance(f"d{i}", str(tmp_path / "one.wav"), "anger", "s0", "c") for i in range(3)]
    rows += [Utterance(f"u{k}", str(tmp_path / f"s{k}.wav"), "joy", f"s{k}", "c") for k in range(3)]
    manifest = Manifest(rows).to_jsonl(tmp_path / "m.jsonl")
    code, text = invoke(["folds", str(manifest), "--out", str(tmp_path / "f.json")], capsys)
    assert code == 0 and "warning: 1 audio file(s) back 3 rows, 0 of them" in text, text


# ---- 8. round trips and messages ----------------------------------------------------------------


@given(st.text(alphabet=st.sampled_from("'=+-@\t\rab"), max_size=6) | st.text(max_size=12))
@example("'+1")
@example("''")
def test_formula_guarding_is_reversible(value: str) -> None:
    cell = files._cell(value)
    assert files._uncell(str(cell)) == value
    assert not str(cell).startswith(files.FORMULA_START)


def test_clip_ids_and_names_starting_like_formulas_survive_export_then_import(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, tally: dict[str, int]
) -> None:
    m, _, _ = corpus
    prefixes = ["'", "+", "'+", "'=", "''", "=", "@", "-"]
    renamed = Manifest(
        Utterance(prefixes[k % len(prefixes)] + u.id, u.path, u.label, u.speaker, u.corpus)
        for k, u in enumerate(m)
    )
    manifest = renamed.to_jsonl(tmp_path / "m.jsonl")
    folds = make_folds(renamed, "loso").to_json(tmp_path / "folds.json")
    al = ALConfig(schedule=("16", "20"), cold_start="random", oracle="human")
    train = TrainConfig(epochs=1, batch_size=8)
    fold = Folds.from_json(folds, renamed).get(0)
    run = Run(
        renamed, str(manifest), str(folds), fold, "scratch:tiny", al, train, tmp_path / "r", None
    )
    state = run_loop(run, start_run(run))
    assert {c[:2] for c in state.pending} & {"'+", "'=", "''"}
    store = LabelStore(run.run_dir)
    for k, clip in enumerate(state.pending):
        store.put(clip, ["'ann", "+ann", "=ann"][k % 3], "anger", 0, source="web")
    before = sorted((a.clip_id, a.annotator, a.label) for a in store.annotations())
    files.export(run.run_dir, tmp_path / "out")
    (RunFolder(run.run_dir).store).unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{RunFolder(run.run_dir).store}{suffix}").unlink(missing_ok=True)
    assert files.import_labels(run.run_dir, tmp_path / "out" / "labels.csv")["stored"] == len(
        before
    )
    after = sorted((a.clip_id, a.annotator, a.label) for a in LabelStore(run.run_dir).annotations())
    assert after == before
    _count(tally, "round_trips", len(before))


def test_ctrl_c_says_how_to_continue(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tally: dict[str, int],
) -> None:
    def interrupted(*args: Any, **kw: Any) -> Manifest:
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a terminal
        time.sleep(5)
        raise AssertionError("SIGINT did not arrive")

    monkeypatch.setattr(Manifest, "from_jsonl", interrupted)
    code, text = invoke(["stats", str(tmp_path / "m m.jsonl")], capsys)
    assert code == 130, text
    assert f"interrupted; continue with: after stats '{tmp_path / 'm m.jsonl'}'" in text, text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    _count(tally, "round_trips")


def test_ctrl_c_in_a_long_step_ends_with_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while a step shows progress as plain lines (stderr in a file): the step's last
    line says it was interrupted, and the very last line says how to continue."""
    import after.progress
    from after.progress import progress_bar

    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)

    def interrupted(*args: Any, **kw: Any) -> Manifest:
        with progress_bar() as bar:
            task = bar.add_task("checking audio", total=100)
            bar.advance(task, 40)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        raise AssertionError("SIGINT did not arrive")

    monkeypatch.setattr(Manifest, "from_jsonl", interrupted)
    code, text = invoke(["stats", str(tmp_path / "m.jsonl")], capsys)
    lines = text.strip().splitlines()
    assert code == 130 and lines[-1].startswith("interrupted; continue with: after stats"), text
    assert lines[-2].startswith("checking audio: 40/100 (40%); INTERRUPTED after"), text
    assert not any("ended after" in line for line in lines), text


def test_a_store_held_exclusively_keeps_the_page_quick_and_answers_clear(
    people: tuple[Run, LoopState], monkeypatch: pytest.MonkeyPatch, tally: dict[str, int]
) -> None:
    run, state = people
    client = TestClient(create_app(run.run_dir), base_url="http://127.0.0.1")
    body = {"annotator": "ann", "clip_id": state.pending[0], "label": "anger"}
    holder = sqlite3.connect(RunFolder(run.run_dir).store, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("SELECT count(*) FROM annotations").fetchone()
    try:
        t0 = time.monotonic()
        r = client.get("/api/session")
        assert time.monotonic() - t0 < 2.5, "the page waited for the store"
        assert r.status_code == 503 and "locked" in r.json()["error"], r.text
        r = client.post("/api/answers", json=body)
        assert r.status_code == 503 and "nothing was stored" in r.json()["error"], r.text
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert LabelStore(run.run_dir).annotations() == []

    # Stored, and then the store cannot be read for the progress: the answer still says stored.
    reads = LabelStore.annotations

    def busy_read(self: LabelStore, *args: Any, **kw: Any) -> Any:
        if kw.get("round") is not None:
            raise AfterError(f"{self.path}: held locked; nothing was read")
        return reads(self, *args, **kw)

    monkeypatch.setattr(LabelStore, "annotations", busy_read)
    r = client.post("/api/answers", json=body)
    assert r.status_code == 200 and r.json()["stored"] is True and r.json()["progress"] is None
    assert "stored" in r.json()["note"]
    monkeypatch.setattr(LabelStore, "annotations", reads)
    assert [a.clip_id for a in LabelStore(run.run_dir).annotations()] == [state.pending[0]]
    _count(tally, "round_trips", 2)


def test_validate_caps_every_echoed_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    huge = "x" * 2_000_000
    rows = [
        {"id": huge, "path": "missing.wav", "label": "anger", "speaker": "s", "corpus": "c"},
        {"id": "b", "path": "gone.wav", "label": "y" * 500_000, "speaker": "s", "corpus": "c"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, text = invoke(["validate", str(manifest), "--labels", "anger,joy"], capsys)
    assert code == 1 and len(text) < 20_000 and "(2000000 characters)" in text, len(text)
    code, text = invoke(["stats", str(manifest)], capsys)
    assert code == 0 and len(text) < 20_000, len(text)
    _count(tally, "round_trips")
