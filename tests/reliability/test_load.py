"""The labeling app under load and attack on loopback: many annotators submit thousands of
answers while an attacker sends malformed, traversing, unauthenticated and oversized requests;
every answer is stored exactly once, every attack gets a 4xx, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.label.app import MAX_BODY, create_app
from after.label.store import LabelStore
from after.loop.runner import Run, run_loop, start_run

TOKEN = "load-test-token-0123456789"
ANNOTATORS = 24
REPEATS = 14  # each annotator answers each clip this many times (re-labels replace)
ATTACKER_SECONDS = 60.0  # a bound: the attacker stops when the annotators are done, or then


def _people_run(corpus: tuple[Manifest, Path, Path], root: Path) -> tuple[Run, list[str]]:
    m, manifest, folds = corpus
    config = ALConfig(schedule=("6", "10"), cold_start="random", oracle="human")
    fold = Folds.from_json(folds, m).get(0)
    train = TrainConfig(epochs=1, min_steps=0, batch_size=8)
    run = Run(m, str(manifest), str(folds), fold, "scratch:tiny", config, train, root / "run", None)
    state = run_loop(run, start_run(run))
    return run, state.pending


def _attacks(clip: str, test_clip: str) -> list[tuple[str, str, bytes, dict[str, str], str]]:
    """(method, path, body, headers, what) — each must get a 4xx."""
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ok_body = json.dumps({"annotator": "mallory", "clip_id": clip, "label": "anger"}).encode()
    bad_label = json.dumps({"annotator": "m", "clip_id": clip, "label": "<script>"}).encode()
    bad_id = json.dumps({"annotator": "m", "clip_id": "x" * 500, "label": "anger"}).encode()
    near = {**auth, "Authorization": "Bearer " + TOKEN[:-1]}
    evil = {**auth, "Origin": "http://evil.example"}
    return [
        ("GET", "/api/session", b"", {}, "no token"),
        ("GET", "/api/session", b"", {"Authorization": "Bearer wrong"}, "wrong token"),
        ("POST", "/api/answers", ok_body, {"Content-Type": "application/json"}, "no token"),
        ("POST", "/api/answers", ok_body, near, "a token one character short"),
        ("GET", "/api/audio/../../../../etc/passwd", b"", auth, "traversal"),
        ("GET", "/api/audio/..%2F..%2Fconfig.json", b"", auth, "encoded traversal"),
        ("GET", "/api/audio//etc/shadow", b"", auth, "absolute path"),
        ("GET", "/api/audio/" + test_clip, b"", auth, "a clip outside the round"),
        ("POST", "/api/answers", b"{not json", auth, "malformed JSON"),
        ("POST", "/api/answers", b"[1, 2, 3]", auth, "JSON that is not an object"),
        ("POST", "/api/answers", bad_label, auth, "unknown label"),
        ("POST", "/api/answers", bad_id, auth, "unknown id"),
        ("POST", "/api/answers", b"x" * (MAX_BODY + 1), auth, "oversized body"),
        ("POST", "/api/answers", ok_body, {**auth, "Content-Type": "text/plain"}, "form post"),
        ("POST", "/api/answers", ok_body, evil, "cross-origin"),
        ("DELETE", "/api/answers", b"", auth, "wrong method"),
    ]


@pytest.mark.slow
def test_thousands_of_answers_under_attack(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, serve: Any, tally: dict[str, int]
) -> None:
    run, clips = _people_run(corpus, tmp_path)
    labels = run.manifest.labels
    sent: dict[str, int] = {}
    failures: list[str] = []
    attacks: list[tuple[str, int]] = []
    done = threading.Event()

    def annotate(name: str, host: Any) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        n = 0
        for k in range(REPEATS):
            for j, clip in enumerate(clips):
                body = json.dumps(
                    {"annotator": name, "clip_id": clip, "label": labels[(j + k) % 4]}
                )
                conn.request("POST", "/api/answers", body, headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    failures.append(f"{name}: {r.status}")
                n += 1
        sent[name] = n
        conn.close()

    def attack(host: Any) -> None:
        deadline = time.monotonic() + ATTACKER_SECONDS
        plan = _attacks(clips[0], run.fold.test[0])
        while not done.is_set() and time.monotonic() < deadline:
            for method, path, body, headers, what in plan:
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
                conn.request(method, path, body or None, headers)
                r = conn.getresponse()
                r.read()
                conn.close()
                attacks.append((what, r.status))

    app = create_app(run.run_dir, host="0.0.0.0", token=TOKEN)  # any bind but loopback: token
    t0 = time.monotonic()
    with serve(app) as url:
        host = urlsplit(url)
        workers = [
            threading.Thread(target=annotate, args=(f"ann{k:02d}", host)) for k in range(ANNOTATORS)
        ]
        attacker = threading.Thread(target=attack, args=(host,))
        attacker.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)
        done.set()
        attacker.join(120)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        conn.request("GET", "/api/session", headers={"Authorization": f"Bearer {TOKEN}"})
        alive = conn.getresponse()
        info = json.loads(alive.read())
    seconds = time.monotonic() - t0

    assert failures == []
    assert alive.status == 200 and info["decided"] == len(clips)  # still serving, all decided
    rejected = [a for a in attacks if 400 <= a[1] < 500]
    assert attacks and rejected == attacks, sorted({a for a in attacks if a not in rejected})
    store = LabelStore(run.run_dir)
    history, rows = store.history(), store.annotations()
    total = sum(sent.values())
    assert total == ANNOTATORS * REPEATS * len(clips)
    assert len(history) == total  # every answer stored exactly once
    assert len(rows) == ANNOTATORS * len(clips)  # one current answer per (clip, annotator)
    last = (REPEATS - 1) % 4
    assert all(a.label == labels[(clips.index(a.clip_id) + last) % 4] for a in rows)
    assert "mallory" not in {h["annotator"] for h in history}  # no attack stored anything
    tally["sent"] = tally.get("sent", 0) + total
    tally["stored"] = tally.get("stored", 0) + len(history)
    tally["attacks"] = tally.get("attacks", 0) + len(attacks)
    tally["attacks_rejected"] = tally.get("attacks_rejected", 0) + len(rejected)
    print(
        f"{total} answers from {ANNOTATORS} annotators in {seconds:.1f} s, {len(attacks)} attacks"
    )
