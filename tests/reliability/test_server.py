"""The labeling server under resource attacks and probing: idle and slow connections, a label
store locked by another process, hostile bodies, Host tricks, weak tokens, framing, and people
writing in each other's names. It keeps answering, refuses with a 4xx (or a 503 that stores
nothing), and loses no answer."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import after.label.app as label_app
from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.label.app import MAX_CONNECTIONS, SECURITY_HEADERS, create_app, make_server
from after.label.store import LabelStore
from after.loop.folder import RunFolder
from after.loop.runner import Run, run_loop, start_run
from after.loop.state import LoopState

TOKEN = "a-strong-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def people(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> tuple[Run, LoopState]:
    """A run labeled by people, waiting for the 6 queries of round 0."""
    m, manifest, folds = corpus
    al = ALConfig(schedule=("6", "10"), cold_start="random", oracle="human")
    fold = Folds.from_json(folds, m).get(0)
    train = TrainConfig(epochs=1, min_steps=0, batch_size=8)
    run = Run(m, str(manifest), str(folds), fold, "scratch:tiny", al, train, tmp_path / "run", None)
    return run, run_loop(run, start_run(run))


def _request(url: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    host = urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, {**AUTH, **headers})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


@pytest.mark.slow
def test_idle_and_slow_connections_do_not_lock_people_out(
    people: tuple[Run, LoopState], serve: Any, tally: dict[str, int]
) -> None:
    run, state = people
    app = create_app(run.run_dir, host="0.0.0.0", token=TOKEN)  # limits apply before the token
    attackers = []
    with serve(app) as url:
        host = urlsplit(url)
        for k in range(MAX_CONNECTIONS + 300):
            s = socket.create_connection((host.hostname, host.port), timeout=30)
            if k % 2:  # slowloris: headers that never end
                s.sendall(b"POST /api/answers HTTP/1.1\r\nHost: x\r\nX-a: ")
            attackers.append(s)
        status, info = _request(url, "GET", "/api/session")
        assert status == 200 and info["total"] == 6
        body = {"annotator": "ann", "clip_id": state.pending[0], "label": "anger"}
        assert _request(url, "POST", "/api/answers", body)[0] == 200
        closed = 0
        for s in attackers:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:  # closed with what it sent unread
                closed += 1
            except BlockingIOError:  # still open: among the newest
                pass
            s.close()
    assert closed >= 300  # the server made room by closing the longest-idle connections
    assert [a.clip_id for a in LabelStore(run.run_dir).annotations()] == [state.pending[0]]
    tally["idle_connections"] = tally.get("idle_connections", 0) + len(attackers)


def test_slow_headers_and_bodies_are_cut_off(
    people: tuple[Run, LoopState],
    serve: Any,
    monkeypatch: pytest.MonkeyPatch,
    tally: dict[str, int],
) -> None:
    run, _ = people
    monkeypatch.setattr(label_app, "HEADER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(label_app, "BODY_TIMEOUT_S", 0.5)
    with serve(create_app(run.run_dir)) as url:
        host = urlsplit(url)
        slow = socket.create_connection((host.hostname, host.port), timeout=20)
        slow.sendall(b"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        assert slow.recv(100) == b""  # closed by the server, not left open for ever
        bodiless = socket.create_connection((host.hostname, host.port), timeout=20)
        bodiless.sendall(
            b"POST /api/answers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        assert bodiless.recv(100).startswith(b"HTTP/1.1 408")
        slow.close()
        bodiless.close()
    tally["attacks"] = tally.get("attacks", 0) + 2
    tally["attacks_rejected"] = tally.get("attacks_rejected", 0) + 2


@pytest.mark.slow
def test_a_locked_store_keeps_the_page_answering_and_loses_nothing(
    people: tuple[Run, LoopState],
    serve: Any,
    monkeypatch: pytest.MonkeyPatch,
    tally: dict[str, int],
) -> None:
    run, state = people
    monkeypatch.setattr(label_app, "WRITE_WAIT_S", 1.0)
    writers = 60  # more than the server's 40 worker threads
    bodies = [
        {"annotator": f"ann{k}", "clip_id": state.pending[k % 6], "label": "anger"}
        for k in range(writers)
    ]
    results: list[tuple[int, Any]] = []
    with serve(create_app(run.run_dir)) as url:
        holder = sqlite3.connect(RunFolder(run.run_dir).store, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            threads = [
                threading.Thread(
                    target=lambda b: results.append(_request(url, "POST", "/api/answers", b)),
                    args=(b,),
                )
                for b in bodies
            ]
            for t in threads:
                t.start()
            status, info = _request(url, "GET", "/api/session")  # reads keep answering
            assert status == 200 and info["decided"] == 0
            for t in threads:
                t.join(60)
        finally:
            holder.execute("ROLLBACK")
        assert {status for status, _ in results} == {503}
        messages = {r["error"] for _, r in results}
        assert all("nothing was stored" in m and "damaged" not in m for m in messages), messages
        assert all(_request(url, "POST", "/api/answers", b)[0] == 200 for b in bodies)  # retried
    rows = LabelStore(run.run_dir).annotations()
    assert sorted((a.annotator, a.clip_id) for a in rows) == sorted(
        (b["annotator"], b["clip_id"]) for b in bodies
    )
    tally["locked_store_writes"] = tally.get("locked_store_writes", 0) + writers
    tally["lost"] = tally.get("lost", 0) + writers - len(rows)


def _client(run: Run, **kw: Any) -> TestClient:
    return TestClient(create_app(run.run_dir, **kw), base_url="http://127.0.0.1")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(max_size=20),
                st.sampled_from(["anger", "ann", "0.1", "\ud800", "\x00", "9" * 5000]),
            ),
            lambda inner: st.one_of(
                st.lists(inner, max_size=3),
                st.dictionaries(
                    st.sampled_from(["annotator", "clip", "clip_id", "label", "x"]),
                    inner,
                    max_size=4,
                ),
            ),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
        st.sampled_from(
            [
                b"[" * 50_000,
                b'{"annotator": "a", "clip": "0.1", "label": ' + b"9" * 5000 + b"}",
                b'{"annotator": "\\ud800", "clip": "0.1", "label": null}',
                b'{"annotator": "a", "clip_id": "\\ud800x", "label": "\\udfff"}',
                b'{"annotator": "a", "clip": "0.1", "label": NaN}',
                b"\xff\xfe{}",
            ]
        ),
    ),
    path=st.sampled_from(["/api/answers", "/api/undo", "/api/advance"]),
)
def test_no_body_gets_a_server_error(
    people: tuple[Run, LoopState], body: bytes, path: str, tally: dict[str, int]
) -> None:
    run, _ = people
    client = _client(run)
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    assert "Traceback" not in r.text
    refused = r.status_code >= 400  # the rest were valid answers or undos
    tally["attacks"] = tally.get("attacks", 0) + refused
    tally["attacks_rejected"] = tally.get("attacks_rejected", 0) + refused


def test_hardening(people: tuple[Run, LoopState], serve: Any, tally: dict[str, int]) -> None:
    run, state = people
    client = _client(run)
    probes = 0
    for r in (client.get("/"), client.get("/api/next"), client.get("/api/session")):
        assert all(r.headers[k] == v for k, v in SECURITY_HEADERS.items())  # never in a frame
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    for host in (
        "localhost:1@evil.example",
        "localhost@evil.example",
        "evil.example#@localhost",
        "127.0.0.1.evil.example",
        "localhost:8765:1",
        "[::1]@evil.example",
        "localhost.",
        "",
    ):
        r = client.get("/api/session", headers={"Host": host})
        assert r.status_code == 421 and "frame-ancestors" in r.headers["content-security-policy"]
        probes += 1
    for host in ("localhost", "localhost:8765", "127.0.0.1:1", "127.0.0.2:8765", "[::1]:8765"):
        assert client.get("/api/session", headers={"Host": host}).status_code == 200, host
    for weak in ("a", "   ", "0123456789abcde", "has a space 0123456789", "token\n0123456789ab"):
        with pytest.raises(AfterError, match="at least 16"):
            create_app(run.run_dir, host="0.0.0.0", token=weak)
        probes += 1
    assert client.get(f"/api/audio/{state.pending[0]}").status_code == 404  # ids are not handles
    probes += 1
    tally["attacks"] = tally.get("attacks", 0) + probes
    tally["attacks_rejected"] = tally.get("attacks_rejected", 0) + probes


def test_a_second_loopback_address_works(people: tuple[Run, LoopState]) -> None:
    run, _ = people
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    server = make_server(create_app(run.run_dir, host="127.0.0.2"), "127.0.0.2", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            thread.join(0.02)
        conn = http.client.HTTPConnection("127.0.0.2", port, timeout=10)
        conn.request("GET", "/api/session")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert label_app.url_host("127.0.0.2") == "127.0.0.2"


def test_nobody_answers_or_undoes_in_another_persons_name(
    people: tuple[Run, LoopState], tally: dict[str, int]
) -> None:
    run, state = people
    ann, bob, script = _client(run), _client(run), _client(run)
    for c in (ann, bob):
        assert c.get("/").status_code == 200  # the page gives each browser its key
    assert ann.cookies["after_key"] != bob.cookies["after_key"]
    post = {"Content-Type": "application/json"}
    first = {"annotator": "ann", "clip": "0.1", "label": "anger"}
    assert ann.post("/api/answers", json=first, headers=post).status_code == 200
    attempts = [
        bob.post("/api/undo", json={"annotator": "ann"}, headers=post),
        bob.post("/api/answers", json={**first, "label": "sadness"}, headers=post),
        script.post("/api/undo", json={"annotator": "ann"}, headers=post),  # no key at all
    ]
    assert [r.status_code for r in attempts] == [403, 403, 403]
    assert "another browser" in attempts[0].json()["error"]
    rows = LabelStore(run.run_dir).annotations()
    assert [(a.annotator, a.clip_id, a.label) for a in rows] == [("ann", state.pending[0], "anger")]
    assert ann.post("/api/undo", json={"annotator": "ann"}, headers=post).status_code == 200
    tally["attacks"] = tally.get("attacks", 0) + len(attempts)
    tally["attacks_rejected"] = tally.get("attacks_rejected", 0) + len(attempts)


def test_a_change_after_the_loop_took_the_clip_is_refused_not_ignored(
    people: tuple[Run, LoopState], tally: dict[str, int]
) -> None:
    run, state = people
    client = _client(run)
    client.get("/")
    post = {"Content-Type": "application/json"}
    first = {"annotator": "ann", "clip": "0.1", "label": "anger"}
    assert client.post("/api/answers", json=first, headers=post).status_code == 200
    state = run_loop(run, LoopState.load(run.run_dir))  # takes clip 1; the rest still wait
    assert state.labels == {state_clip(run, 0): "anger"} and state.phase == "label"
    undo = client.post("/api/undo", json={"annotator": "ann"}, headers=post)
    change = client.post("/api/answers", json={**first, "label": "sadness"}, headers=post)
    other = client.post(
        "/api/answers", json={**first, "annotator": "bob", "label": "sadness"}, headers=post
    )
    assert [r.status_code for r in (undo, change, other)] == [409, 409, 409]
    assert all("taken by the active-learning loop" in r.json()["error"] for r in (undo, change))
    assert LoopState.load(run.run_dir).labels == {state_clip(run, 0): "anger"}
    rows = LabelStore(run.run_dir).annotations()
    assert [(a.annotator, a.label) for a in rows] == [("ann", "anger")]  # state and store agree
    tally["late_changes_refused"] = tally.get("late_changes_refused", 0) + 3


def state_clip(run: Run, k: int) -> str:
    """The id of round 0's query number k+1."""
    return str(json.loads((run.run_dir / "queries" / "round_000.json").read_text())["ids"][k])
