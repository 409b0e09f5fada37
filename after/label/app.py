"""`after label serve`: a small web app where people label the clips a run queried.

One page (plain HTML and JavaScript, no build step) and a JSON API over the run folder:

- GET  /                     the labeling page
- GET  /api/session          labels, keys, round, progress
- GET  /api/next?annotator=  the annotator's next clip, in the strategy's order
- POST /api/answers          {"annotator", "clip_id", "label"} (label null: skip)
- POST /api/undo             {"annotator"}: withdraw that person's latest answer of this round
- GET  /api/audio/{clip_id}  the clip as 16 kHz 16-bit WAV (only clips queried this round)
- POST /api/advance          start `after run --resume` once the round is labeled
- GET  /api/status           phase, round, whether the next round is being trained

Security: the server binds 127.0.0.1 unless told otherwise, and then checks the Host header (a web
page elsewhere cannot reach it through DNS rebinding). Any other bind needs a token: requests carry
it as `Authorization: Bearer`, or the page gets it once from `?token=` and keeps it in an HttpOnly
cookie. Writes must be JSON (a form on another site cannot post one without a preflight we never
answer) from the same origin, at most 16 KiB. Audio is looked up by clip id among this round's
queries and read from the manifest's path for that id: a request never names a file.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from after.errors import AfterError
from after.label.store import LabelStore
from after.loop.runner import Run, queries_path
from after.loop.state import STATE_FILE, LoopState

MAX_BODY = 16 * 1024
MAX_NAME = 64
LEASE_S = 120.0  # a clip handed to one annotator is not handed to another for this long
ADVANCE_LOG = "advance.log"
PAGE = Path(__file__).with_name("page.html")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Round:
    number: int
    phase: str
    ids: list[str]
    position: dict[str, int]
    guesses: dict[str, tuple[str, float]]
    settled: set[str]  # taken by the loop already (labeled or dropped)
    stopped_because: str


class LabelingSession:
    """The run as the app sees it: the current round's queries, the label store, and the
    leases that keep two annotators off the same clip while others are free."""

    def __init__(self, run_dir: str | os.PathLike[str], *, show_guess: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run = Run.from_dir(self.run_dir)
        if self.run.al.oracle != "human":
            raise AfterError(
                f"{self.run_dir}: this run's labels come from the manifest (oracle simulated); "
                "start a run with --oracle human to label it here"
            )
        self.labels = list(self.run.manifest.labels)
        self.min_votes = self.run.al.min_votes
        self.store = LabelStore(self.run_dir)
        self.show_guess = show_guess
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}
        self._seen: tuple[int, int] | None = None
        self._round: _Round | None = None
        self._advance: subprocess.Popen[bytes] | None = None

    # ---- the round

    def current(self) -> _Round:
        """The round being labeled, re-read whenever state.json or the queries file changes."""
        state_file = self.run_dir / STATE_FILE
        with self._lock:
            stamp = (state_file.stat().st_mtime_ns, state_file.stat().st_size)
            if self._round is None or stamp != self._seen:
                state = LoopState.load(self.run_dir)
                ids: list[str] = []
                guesses: dict[str, tuple[str, float]] = {}
                path = queries_path(self.run_dir, state.round)
                if state.phase == "label" and path.is_file():
                    queries = json.loads(path.read_text())
                    ids = list(queries["ids"])
                    if queries.get("probs"):
                        for i, p in zip(ids, queries["probs"], strict=True):
                            best = max(range(len(p)), key=p.__getitem__)
                            guesses[i] = (queries["labels"][best], float(p[best]))
                self._round = _Round(
                    number=state.round,
                    phase=state.phase,
                    ids=ids,
                    position={i: k for k, i in enumerate(ids)},
                    guesses=guesses,
                    settled={i for i in ids if i in state.labeled or i in state.dropped},
                    stopped_because=state.stopped_because,
                )
                self._seen = stamp
            return self._round

    def _counts(self, r: _Round) -> tuple[dict[str, int], dict[str, set[str]]]:
        counts = {i: 0 for i in r.ids}
        who: dict[str, set[str]] = {i: set() for i in r.ids}
        for a in self.store.annotations(r.ids, round=r.number):
            counts[a.clip_id] += 1
            who[a.clip_id].add(a.annotator)
        return counts, who

    def progress(self, annotator: str | None = None) -> dict[str, Any]:
        r = self.current()
        counts, who = self._counts(r)
        decided = sum(1 for i in r.ids if i in r.settled or counts[i] >= self.min_votes)
        mine = sum(1 for i in r.ids if annotator in who[i]) if annotator else 0
        return {
            "round": r.number,
            "phase": r.phase,
            "total": len(r.ids),
            "decided": decided,
            "mine": mine,
            "complete": r.phase == "label" and decided == len(r.ids),
            "stopped_because": r.stopped_because,
            "advancing": self.advancing(),
        }

    def next_clip(self, annotator: str) -> dict[str, Any] | None:
        """The first clip in strategy order that still needs answers and that this annotator
        has not answered, preferring clips nobody else is holding."""
        r = self.current()
        counts, who = self._counts(r)
        open_ = [
            i
            for i in r.ids
            if i not in r.settled and counts[i] < self.min_votes and annotator not in who[i]
        ]
        if not open_:
            return None
        now = time.monotonic()
        with self._lock:
            free = [
                i
                for i in open_
                if (lease := self._leases.get(i)) is None or lease[0] == annotator or lease[1] < now
            ]
            clip = (free or open_)[0]
            self._leases[clip] = (annotator, now + LEASE_S)
        return self.describe(clip)

    def describe(self, clip: str) -> dict[str, Any]:
        r = self.current()
        u = self.run.manifest[clip]
        out: dict[str, Any] = {
            "clip_id": clip,
            "position": r.position[clip] + 1,
            "audio": "/api/audio/" + quote(clip, safe=""),
            "duration_s": u.duration_s,
        }
        if self.show_guess and clip in r.guesses:
            label, score = r.guesses[clip]
            out["guess"] = {"label": label, "score": round(score, 3)}
        return out

    # ---- writes

    def answer(self, annotator: str, clip: str, label: str | None) -> None:
        r = self._writable(clip)
        if label is not None and label not in self.labels:
            raise HTTPError(400, f"unknown label {label!r}; this run's labels: {self.labels}")
        self.store.put(clip, annotator, label, r.number, source="web")
        with self._lock:
            self._leases.pop(clip, None)

    def undo(self, annotator: str) -> dict[str, Any] | None:
        r = self._writable(None)
        clip = self.store.undo(annotator, r.number)
        return self.describe(clip) if clip is not None and clip in r.position else None

    def _writable(self, clip: str | None) -> _Round:
        r = self.current()
        if r.phase != "label":
            raise HTTPError(409, f"round {r.number} is not open for labels (phase {r.phase})")
        if clip is not None and clip not in r.position:
            raise HTTPError(404, f"clip {clip!r} is not queried in round {r.number}")
        return r

    # ---- audio

    def audio(self, clip: str) -> bytes:
        import numpy as np
        import soundfile as sf

        from after.data.audio import SAMPLE_RATE, load_audio

        r = self.current()
        if clip not in r.position:
            raise HTTPError(404, f"clip {clip!r} is not queried in round {r.number}")
        try:
            wave = load_audio(self.run.manifest[clip].path)
        except AfterError as e:
            raise HTTPError(500, f"clip {clip!r}: {e}") from None
        buf = io.BytesIO()
        sf.write(buf, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    # ---- the next round

    def advancing(self) -> bool:
        return self._advance is not None and self._advance.poll() is None

    def advance(self) -> None:
        """Train the next round in the background: `after run --resume RUN_DIR`."""
        p = self.progress()
        with self._lock:
            if self._advance is not None and self._advance.poll() is None:
                raise HTTPError(409, "the next round is being trained already")
            if p["phase"] == "done":
                raise HTTPError(409, "this run is finished")
            if p["phase"] == "label" and not p["complete"]:
                left = p["total"] - p["decided"]
                raise HTTPError(409, f"{left} clip(s) of round {p['round']} still need answers")
            log = open(self.run_dir / ADVANCE_LOG, "ab")  # noqa: SIM115 (the child owns it)
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} after run --resume\n".encode())
            log.flush()
            self._advance = subprocess.Popen(
                [sys.executable, "-m", "after", "run", "--resume", str(self.run_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()

    def advance_log(self, lines: int = 8) -> list[str]:
        path = self.run_dir / ADVANCE_LOG
        if not path.is_file():
            return []
        return path.read_text(errors="replace").splitlines()[-lines:]


# ---- HTTP ----------------------------------------------------------------------------------------


def _annotator(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HTTPError(400, "give an annotator name")
    name = value.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise HTTPError(400, f"annotator names are at most {MAX_NAME} printable characters")
    return name


async def _json_body(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return data


def create_app(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    show_guess: bool = False,
) -> Starlette:
    """The ASGI app for one run folder. Refuses a non-loopback `host` without a token."""
    if not is_loopback(host) and not token:
        raise AfterError(
            f"binding {host} would let anyone on the network read the audio and write labels; "
            "give a token (after label serve makes one for you), or bind 127.0.0.1"
        )
    session = LabelingSession(run_dir, show_guess=show_guess)
    page = PAGE.read_text()

    async def index(request: Request) -> Response:
        response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if token and request.query_params.get("token") == token:
            response.set_cookie("after_token", token, httponly=True, samesite="strict")
        return response

    async def info(request: Request) -> Response:
        p = await run_in_threadpool(session.progress, request.query_params.get("annotator"))
        return JSONResponse(
            {
                "run": session.run_dir.name,
                "labels": session.labels,
                "min_votes": session.min_votes,
                "show_guess": session.show_guess,
                "resume_command": f"after run --resume {session.run_dir}",
                **p,
            }
        )

    async def next_clip(request: Request) -> Response:
        name = _annotator(request.query_params.get("annotator"))
        clip = await run_in_threadpool(session.next_clip, name)
        progress = await run_in_threadpool(session.progress, name)
        return JSONResponse({"clip": clip, "progress": progress})

    async def answers(request: Request) -> Response:
        data = await _json_body(request)
        name = _annotator(data.get("annotator"))
        clip, label = data.get("clip_id"), data.get("label")
        if not isinstance(clip, str):
            raise HTTPError(400, "give clip_id as a string")
        if label is not None and not isinstance(label, str):
            raise HTTPError(400, "label must be a string, or null to skip")
        await run_in_threadpool(session.answer, name, clip, label)
        progress = await run_in_threadpool(session.progress, name)
        return JSONResponse({"stored": True, "progress": progress})

    async def undo(request: Request) -> Response:
        name = _annotator((await _json_body(request)).get("annotator"))
        clip = await run_in_threadpool(session.undo, name)
        progress = await run_in_threadpool(session.progress, name)
        return JSONResponse({"clip": clip, "progress": progress})

    async def audio(request: Request) -> Response:
        data = await run_in_threadpool(session.audio, request.path_params["clip_id"])
        return Response(data, media_type="audio/wav", headers={"Cache-Control": "private"})

    async def advance(request: Request) -> Response:
        await _json_body(request)
        await run_in_threadpool(session.advance)
        return JSONResponse({"started": True}, status_code=202)

    async def status(request: Request) -> Response:
        p = await run_in_threadpool(session.progress)
        return JSONResponse({**p, "log": session.advance_log()})

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPError):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        # The store could not write (disk full, permissions, a damaged file): nothing was
        # stored, earlier answers are intact, the client may retry.
        return JSONResponse({"error": str(exc)}, status_code=503)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/session", info),
            Route("/api/next", next_clip),
            Route("/api/answers", answers, methods=["POST"]),
            Route("/api/undo", undo, methods=["POST"]),
            Route("/api/audio/{clip_id:path}", audio),
            Route("/api/advance", advance, methods=["POST"]),
            Route("/api/status", status),
        ],
        exception_handlers={HTTPError: on_error, AfterError: on_error},
    )
    app.state.session = session
    return Guard(app, token=token, check_host=is_loopback(host))  # type: ignore[return-value]


class Guard:
    """Checks every request before the app sees it: Host (loopback binds), token (other
    binds), and for writes a JSON content type, a same-origin Origin and a bounded length."""

    def __init__(self, app: ASGIApp, *, token: str | None, check_host: bool) -> None:
        self.app, self.token, self.check_host = app, token, check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        problem = self._check(request)
        if problem is not None:
            status, message = problem
            await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, request: Request) -> tuple[int, str] | None:
        host = request.headers.get("host", "")
        if self.check_host:
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in LOOPBACK_NAMES:
                return 421, f"unexpected Host {host!r}: this server answers on localhost only"
        if self.token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get("after_token", "")
            if request.url.path == "/" and request.method == "GET":
                given = given or request.query_params.get("token", "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return 401, "this server needs its token: open the URL after label serve printed"
        if request.method not in ("GET", "HEAD"):
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return 415, "send JSON (Content-Type: application/json)"
            origin = request.headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != host:
                return 403, f"cross-origin request from {origin} refused"
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                return 413, f"request body over {MAX_BODY} bytes"
        return None


def serve(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    show_guess: bool = False,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(run_dir, host=host, token=token, show_guess=show_guess)
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=256)
