"""The labeling API: what it serves, what it refuses, and that concurrent annotators lose
nothing."""

from __future__ import annotations

import http.client
import io
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import soundfile as sf
from starlette.testclient import TestClient
from typer.testing import CliRunner

from after.errors import AfterError
from after.label.app import MAX_BODY, create_app
from after.label.store import LabelStore
from after.loop.folder import RunFolder
from after.loop.runner import Run, start_run
from after.loop.state import LoopState

LOCAL = "http://127.0.0.1"


def _client(run: Run, **kw: Any) -> TestClient:
    return TestClient(create_app(run.run_dir, **kw), base_url=LOCAL)


def _post(client: TestClient, path: str, body: Any, **headers: str) -> Any:
    return client.post(
        path, content=json.dumps(body), headers={"Content-Type": "application/json", **headers}
    )


def test_clips_come_in_strategy_order_and_answers_are_stored(
    labeling: tuple[Run, LoopState],
) -> None:
    run, state = labeling
    client = _client(run)
    info = client.get("/api/session").json()
    assert info["labels"] == run.manifest.labels and info["total"] == 6 and info["decided"] == 0
    assert client.get("/").text.startswith("<!doctype html>")
    seen = []
    for k in range(6):
        got = client.get("/api/next", params={"annotator": "ann"}).json()
        clip = got["clip"]
        assert "guess" not in clip and clip["clip"] == f"0.{k + 1}"  # no anchoring, no id
        assert not any(i in json.dumps(got) for i in state.pending)  # ids spell labels
        seen.append(state.pending[clip["position"] - 1])
        label = None if k == 5 else run.manifest.labels[k % 4]
        r = _post(
            client, "/api/answers", {"annotator": "ann", "clip": clip["clip"], "label": label}
        )
        assert r.status_code == 200 and r.json()["progress"]["decided"] == k + 1
    assert seen == state.pending  # the strategy's order
    assert client.get("/api/next", params={"annotator": "ann"}).json()["clip"] is None
    assert client.get("/api/status").json()["complete"] is True
    rows = LabelStore(run.run_dir).annotations(round=0)
    assert [(a.clip_id, a.label) for a in rows] == [
        (c, None if k == 5 else run.manifest.labels[k % 4]) for k, c in enumerate(seen)
    ]
    undone = _post(client, "/api/undo", {"annotator": "ann"}).json()
    assert undone["clip"]["position"] == 6 and undone["progress"]["decided"] == 5


def test_audio_is_served_by_clip_id_as_wav(labeling: tuple[Run, LoopState]) -> None:
    run, _state = labeling
    client = _client(run)
    clip = client.get("/api/next", params={"annotator": "ann"}).json()["clip"]
    r = client.get(clip["audio"])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    wave, sr = sf.read(io.BytesIO(r.content))
    assert sr == 16000 and len(wave) > 1000


def test_two_annotators_get_different_clips_first(labeling: tuple[Run, LoopState]) -> None:
    run, _state = labeling
    client = _client(run)
    a = client.get("/api/next", params={"annotator": "ann"}).json()["clip"]["position"]
    b = client.get("/api/next", params={"annotator": "bob"}).json()["clip"]["position"]
    assert (a, b) == (1, 2)


def test_min_votes_needs_that_many_people(make_run: Any, tmp_path: Path) -> None:
    run, state = make_run(tmp_path / "run", min_votes=2)
    client = _client(run)
    first = state.pending[0]
    for who in ("ann", "bob"):
        _post(client, "/api/answers", {"annotator": who, "clip_id": first, "label": "anger"})
        got = client.get("/api/next", params={"annotator": "cy"}).json()
        assert (got["clip"]["position"] == 1) == (who == "ann")
    assert got["progress"]["decided"] == 1


def test_the_model_guess_shows_only_when_enabled(labeling: tuple[Run, LoopState]) -> None:
    run, _state = labeling
    path = RunFolder(run.run_dir).queries(0)
    queries = json.loads(path.read_text())
    probs = [[0.1, 0.7, 0.1, 0.1]] * len(queries["ids"])
    path.write_text(json.dumps({**queries, "probs": probs}))
    clip = _client(run, show_guess=True).get("/api/next", params={"annotator": "a"}).json()["clip"]
    assert clip["guess"] == {"label": run.manifest.labels[1], "score": 0.7}
    clip = _client(run).get("/api/next", params={"annotator": "a"}).json()["clip"]
    assert "guess" not in clip


def test_bad_requests_get_4xx_with_a_message(labeling: tuple[Run, LoopState]) -> None:
    run, state = labeling
    client = _client(run)
    clip = state.pending[0]
    test_clip = run.fold.test[0]
    cases = [
        ({"annotator": "ann", "clip_id": clip, "label": "elation"}, 400, "unknown label"),
        ({"annotator": "ann", "clip_id": "nope", "label": "anger"}, 404, "not queried"),
        ({"annotator": "ann", "clip_id": test_clip, "label": "anger"}, 404, "not queried"),
        ({"annotator": "", "clip_id": clip, "label": "anger"}, 400, "annotator"),
        ({"annotator": "x" * 65, "clip_id": clip, "label": "anger"}, 400, "at most"),
        ({"annotator": "ann", "clip_id": 3, "label": "anger"}, 400, "clip_id"),
        ({"annotator": "ann", "clip_id": clip, "label": 2}, 400, "label must"),
    ]
    for body, status, message in cases:
        r = _post(client, "/api/answers", body)
        assert r.status_code == status and message in r.json()["error"], (body, r.text)
    r = client.post(
        "/api/answers", content="{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post(
        "/api/answers",
        content=json.dumps({"annotator": "a"}),
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 415
    big = json.dumps({"annotator": "ann", "clip_id": clip, "label": "x" * MAX_BODY})
    assert _post(client, "/api/answers", big).status_code == 413

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for _ in range(8):
            yield b" " * (MAX_BODY // 4)

    r = client.post("/api/answers", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = _post(client, "/api/answers", {"annotator": "a"}, Origin="http://evil.example")
    assert r.status_code == 403
    r = client.get("/api/session", headers={"Host": "evil.example"})
    assert r.status_code == 421  # DNS rebinding: a loopback server answers to localhost only
    assert client.get("/api/next").status_code == 400
    assert LabelStore(run.run_dir).annotations() == []  # nothing bad was stored
    r = _post(client, "/api/advance", {})
    assert r.status_code == 403 and "only the run's owner" in r.json()["error"]


OWNER = "owner-key-0123456789"


def test_annotators_see_guidelines_never_metrics_and_only_the_owner_trains(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, _ = labeling
    guide = tmp_path / "guide.md"
    guide.write_text("# Anger\nraised voice, <b>not</b> shouting at a dog\n")
    from after.label.app import read_guidelines

    annotator = _client(run, owner_key=OWNER, guidelines=read_guidelines(guide))
    info = annotator.get("/api/session").json()
    assert info["guidelines"] == guide.read_text() and info["owner"] is False
    assert "resume_command" not in info
    (run.run_dir / "advance.log").write_text("round 0: test UA 61.00%, dev UA 55.00%\n")
    status = annotator.get("/api/status").json()
    assert "UA" not in json.dumps(status) and status["problem"] is None
    assert _post(annotator, "/api/advance", {}).status_code == 403
    annotator.get("/", params={"owner": "wrong-key-0123456789"})  # a guess sets nothing
    assert annotator.get("/api/session").json()["owner"] is False

    owner = _client(run, owner_key=OWNER)
    assert owner.get("/", params={"owner": OWNER}).status_code == 200  # sets the owner cookie
    info = owner.get("/api/session").json()
    assert info["owner"] is True and info["resume_command"].startswith("after run --resume")
    r = _post(owner, "/api/advance", {})
    assert r.status_code == 409 and "still need answers" in r.json()["error"]
    with pytest.raises(AfterError, match="owner key must be at least 16"):
        create_app(run.run_dir, owner_key="short")


def test_path_traversal_is_impossible(labeling: tuple[Run, LoopState], serve: Any) -> None:
    run, state = labeling
    secret = run.run_dir / "config.json"
    attempts = [
        "/api/audio/../config.json",
        "/api/audio/../../etc/passwd",
        "/api/audio/..%2F..%2Fetc%2Fpasswd",
        "/api/audio/%2e%2e/%2e%2e/etc/passwd",
        "/api/audio/%2E%2E%2Fconfig.json",
        "/api/audio//etc/passwd",
        "/api/audio/%2Fetc%2Fpasswd",
        "/api/audio/" + str(secret),
        "/api/audio/" + run.manifest[state.pending[0]].path,  # a real audio path, not an id
        "/api/audio/" + run.fold.test[0],  # a clip of the run's manifest, but not queried
        "/../config.json",
        "/api/audio/" + state.pending[0] + "/../" + state.pending[1],
    ]
    with serve(create_app(run.run_dir)) as url:
        host = urlsplit(url)
        for path in attempts:
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
            conn.request("GET", path)  # sent as is: no client-side normalization
            r = conn.getresponse()
            body = r.read()
            assert 400 <= r.status < 500, (path, r.status)
            assert b"root:" not in body and b"manifest_digest" not in body
            conn.close()


def test_a_non_local_bind_needs_a_token(labeling: tuple[Run, LoopState]) -> None:
    run, _ = labeling
    with pytest.raises(AfterError, match="token"):
        create_app(run.run_dir, host="0.0.0.0")
    with pytest.raises(AfterError, match="token"):
        create_app(run.run_dir, host="192.168.1.20", token="")
    token = "s3cret-0123456789"
    client = TestClient(
        create_app(run.run_dir, host="0.0.0.0", token=token), base_url="http://lab.example"
    )
    assert client.get("/api/session").status_code == 401
    assert client.get("/api/session", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get("/api/session", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    assert client.get(f"/api/session?token={token}").status_code == 401  # only the page takes it
    page = client.get(f"/?token={token}")
    assert page.status_code == 200 and "after_token" in page.headers["set-cookie"]
    assert "httponly" in page.headers["set-cookie"].lower()
    assert client.get("/api/session").status_code == 200  # the cookie now carries it


def test_the_cli_makes_a_token_for_a_non_local_bind(
    labeling: tuple[Run, LoopState], monkeypatch: pytest.MonkeyPatch
) -> None:
    import after.label.app
    from after.cli import app

    calls: list[dict[str, Any]] = []

    def serve(run_dir: Path, **kw: Any) -> None:
        calls.append(kw)
        kw["announce"]()  # the real one prints the addresses once the run is its own

    monkeypatch.setattr(after.label.app, "serve", serve)
    run, _ = labeling
    result = CliRunner().invoke(app, ["label", "serve", str(run.run_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    token = calls[0]["token"]
    assert token and len(token) >= 24 and f"?token={token}" in result.output
    result = CliRunner().invoke(app, ["label", "serve", str(run.run_dir)])
    assert calls[1]["token"] is None and "?token=" not in result.output


def test_only_runs_labeled_by_people_are_served(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, _ = labeling
    simulated = replace(run, al=replace(run.al, oracle="simulated"), run_dir=tmp_path / "sim")
    start_run(simulated)
    with pytest.raises(AfterError, match="--oracle human"):
        create_app(simulated.run_dir)
    with pytest.raises(AfterError, match="not found"):
        create_app(tmp_path / "nothing-here")


def test_many_concurrent_annotators_lose_nothing(
    labeling: tuple[Run, LoopState], serve: Any
) -> None:
    run, state = labeling
    labels = run.manifest.labels
    annotators = [f"ann{k}" for k in range(16)]
    failures: list[str] = []

    def work(name: str) -> None:
        host = urlsplit(url)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        for k, clip in enumerate(state.pending * 3):  # every clip, re-answered twice
            body = json.dumps(
                {"annotator": name, "clip_id": clip, "label": labels[(k + len(name)) % 4]}
            )
            conn.request("POST", "/api/answers", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                failures.append(f"{name} {clip}: {r.status}")
        conn.close()

    with serve(create_app(run.run_dir)) as url:
        threads = [threading.Thread(target=work, args=(a,)) for a in annotators]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert failures == []
    store = LabelStore(run.run_dir)
    rows = store.annotations(round=0)
    assert len(rows) == len(annotators) * len(state.pending)
    assert len(store.history()) == 3 * len(annotators) * len(state.pending)
    final = {(a.annotator, a.clip_id): a.label for a in rows}
    for name in annotators:  # each person's last answer is the one kept
        for k, clip in enumerate(state.pending):
            last = k + 2 * len(state.pending)
            assert final[name, clip] == labels[(last + len(name)) % 4]


def test_audit_clips_come_mixed_in_and_only_the_owner_sees_the_estimate(
    make_run: Any, tmp_path: Path
) -> None:
    """An audit set rides in round 0's queue: its clips look like every other (a handle, a
    place in the queue, audio), and once a round has trained, the run's owner, and nobody
    else, sees its estimate."""
    run, state = make_run(tmp_path / "run", audit="4")
    assert len(state.pending) == 10 and set(state.audit) < set(state.pending)
    owner = "owner-key-0123456789"
    client = _client(run, owner_key=owner)
    shown = []
    while (got := client.get("/api/next", params={"annotator": "ann"}).json()["clip"]) is not None:
        assert set(got) == {"clip", "position", "audio", "duration_s"}
        shown.append(got["clip"])
        label = run.manifest.labels[len(shown) % 4]
        _post(client, "/api/answers", {"annotator": "ann", "clip": got["clip"], "label": label})
    assert shown == [f"0.{k + 1}" for k in range(10)]  # in order, audit clips among the rest
    assert "estimate" not in client.get("/api/session").json()
    from after.loop.runner import run_loop

    state = run_loop(run, LoopState.load(run.run_dir))
    assert len(state.audit_labels) == 4 and state.round == 1
    assert "estimate" not in client.get("/api/status").json()  # an annotator: no score
    client.get("/", params={"owner": owner})  # the owner's URL sets the owner's cookie
    estimate = client.get("/api/status").json()["estimate"]
    assert estimate.startswith("round 0's model: audit UA") and "(4 audit labels)" in estimate
    assert client.get("/api/session").json()["estimate"] == estimate
