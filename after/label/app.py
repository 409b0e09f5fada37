"""`after label serve`: a small web app where people label the clips a run queried.

One page (plain HTML and JavaScript, no build step) and a JSON API over the run folder:

- GET  /                     the labeling page
- GET  /api/session          labels, keys, round, progress
- GET  /api/next?annotator=  the annotator's next clip, in the strategy's order
- POST /api/answers          {"annotator", "clip", "label"} (label null: skip); scripts may give
                             "clip_id" in place of the page's "clip" handle
- POST /api/undo             {"annotator"}: withdraw that person's latest answer of this round
- GET  /api/audio/{clip}     the clip as 16 kHz 16-bit WAV (only clips queried this round)
- POST /api/advance          the run's owner only: start `after run --resume` once the round
                             is labeled
- GET  /api/status           phase, round, whether the next round is being trained (and, for
                             the owner, why training it failed, and the latest round's audit
                             estimate)

Annotators see the clips, the labels and the guidelines (`--guidelines FILE`), never the run's
metrics: the log of training the next round holds test scores, and a person who sees them may
label toward them. Training the next round is the owner's action: `after label serve` prints a
second URL that carries the owner key (an HttpOnly cookie from then on).

The page knows a clip by a handle, `ROUND.POSITION` in the strategy's order, never by its id
(corpus ids often spell the label). An answer to a clip that the loop has taken already is refused
(409): it could not change what the loop learns from.

Security: the server binds 127.0.0.1 unless told otherwise, and then checks the Host header (a web
page elsewhere cannot reach it through DNS rebinding); any loopback address works. Any other bind
needs a token (at least 16 URL-safe characters): requests carry it as `Authorization: Bearer`, or
the page gets it once from `?token=` and keeps it in an HttpOnly cookie. Writes must be JSON (a form
on another site cannot post one without a preflight we never answer) from the same origin, at most
16 KiB. Audio is looked up by handle among this round's queries and read from the manifest's path
for that clip: a request never names a file. No page may frame this one. The page also gets a
random browser key (an HttpOnly cookie): an annotator name belongs to the browser that first used
it, so nobody can answer or undo in another person's name.

Resources: a connection must send a request's headers within `HEADER_TIMEOUT_S` (and a body
within `BODY_TIMEOUT_S`), an idle one is closed after `KEEP_ALIVE_S`, and at most
`MAX_CONNECTIONS` are open: a new one closes the longest-idle first, so idle or slow connections
cannot lock people out. Answers are written one at a time, each waiting at most `WRITE_WAIT_S` for
the label store's lock (another process may hold it): then 503, nothing stored, try again. Reads
never wait behind writes, and wait at most `READ_WAIT_S` for a store held exclusively. One server
serves a run (`serve.lock`, with its address): a second would hand the same clips out twice.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from after.errors import AfterError, AudioError, quoted
from after.io import held_lock, os_error_message
from after.label.store import ClipTaken, LabelStore, NameInUse, StoreBusy, check_annotator
from after.loop.folder import RunFolder
from after.loop.runner import Run
from after.loop.state import LoopState

MAX_BODY = 16 * 1024
LEASE_S = 120.0  # a clip handed to one annotator is not handed to another for this long
ADVANCE_LOG = "advance.log"
PAGE = Path(__file__).with_name("page.html")
TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,}")  # URL-safe, so that it fits in the printed URL
KEY_COOKIE = "after_key"  # a random key per browser: the annotator names it owns
OWNER_COOKIE = "after_owner"  # the owner key: may train the next round
MAX_GUIDELINES = 64 * 1024  # characters of annotation guidelines
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 256
WRITE_WAIT_S = 5.0
READ_WAIT_S = 0.5  # reads wait this long for a store another process holds exclusively
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's URL may carry the token
}
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?")
T = TypeVar("T")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def is_loopback(host: str) -> bool:
    """localhost, or any loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """How to write the bound address in a URL: 127.0.0.1 as localhost, IPv6 in brackets."""
    if host in ("127.0.0.1", "localhost"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


@dataclass
class _Round:
    number: int
    phase: str
    ids: list[str]
    position: dict[str, int]
    guesses: dict[str, tuple[str, float]]
    settled: set[str]  # taken by the loop already (labeled or dropped)
    stopped_because: str
    estimate: str  # the last round's model on the audit set, in words (for the owner only)

    def handle(self, clip: str) -> str:
        """What the page calls a clip: round and position, never the id."""
        return f"{self.number}.{self.position[clip] + 1}"

    def clip(self, handle: str) -> str:
        """The clip of a handle of this round; 404 otherwise."""
        number, _, position = handle.partition(".")
        if number != str(self.number) or not position.isdigit():
            raise HTTPError(404, f"clip {quoted(handle)} is not queried in round {self.number}")
        k = int(position) - 1
        if not 0 <= k < len(self.ids):
            raise HTTPError(404, f"clip {quoted(handle)} is not queried in round {self.number}")
        return self.ids[k]


class LabelingSession:
    """The run as the app sees it: the current round's queries, the label store, and the
    leases that keep two annotators off the same clip while others are free."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        show_guess: bool = False,
        wait_s: float = 60.0,
        read_wait_s: float | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run = Run.from_dir(self.run_dir)
        if self.run.al.oracle != "human":
            raise AfterError(
                f"{self.run_dir}: this run's labels come from the manifest (oracle simulated); "
                "start a run with --oracle human to label it here"
            )
        self.labels = list(self.run.manifest.labels)
        self.min_votes = self.run.al.min_votes
        self.store = LabelStore(self.run_dir, wait_s=wait_s, read_wait_s=read_wait_s)
        self.show_guess = show_guess
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}
        self._seen: tuple[int, int] | None = None
        self._round: _Round | None = None
        self._advance: subprocess.Popen[bytes] | None = None

    # ---- the round

    def current(self) -> _Round:
        """The round being labeled, re-read whenever state.json or the queries file changes."""
        state_file = RunFolder(self.run_dir).state
        with self._lock:
            stamp = (state_file.stat().st_mtime_ns, state_file.stat().st_size)
            if self._round is None or stamp != self._seen:
                state = LoopState.load(self.run_dir)
                ids: list[str] = []
                guesses: dict[str, tuple[str, float]] = {}
                path = RunFolder(self.run_dir).queries(state.round)
                if state.phase == "label" and path.is_file():
                    queries = RunFolder(self.run_dir).read_queries(state.round)
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
                    settled={
                        i
                        for i in ids
                        if i in state.labeled or i in state.dropped or i in state.audit_labels
                    },
                    stopped_because=state.stopped_because,
                    estimate=_estimate(state),
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
            "clip": r.handle(clip),
            "position": r.position[clip] + 1,
            "audio": "/api/audio/" + r.handle(clip),
            "duration_s": u.duration_s,
        }
        if self.show_guess and clip in r.guesses:
            label, score = r.guesses[clip]
            out["guess"] = {"label": label, "score": round(score, 3)}
        return out

    # ---- writes

    def answer(
        self,
        annotator: str,
        clip: str,
        label: str | None,
        *,
        handle: bool = True,
        key: str | None = None,
    ) -> None:
        """Store an answer to `clip` (a handle, or with `handle=False` a clip id)."""
        r = self._writable()
        if handle:
            clip = r.clip(clip)
        elif clip not in r.position:
            raise HTTPError(404, f"clip {quoted(clip)} is not queried in round {r.number}")
        if clip in r.settled:
            raise ClipTaken(
                f"clip {r.position[clip] + 1} of round {r.number} was taken by the "
                "active-learning loop already; its label can no longer change"
            )
        if label is not None and label not in self.labels:
            raise HTTPError(400, f"unknown label {quoted(label)}; this run's labels: {self.labels}")
        self.store.put(clip, annotator, label, r.number, source="web", key=key)
        with self._lock:
            self._leases.pop(clip, None)

    def undo(self, annotator: str, *, key: str | None = None) -> dict[str, Any] | None:
        r = self._writable()
        clip = self.store.undo(annotator, r.number, key=key)
        return self.describe(clip) if clip is not None and clip in r.position else None

    def _writable(self) -> _Round:
        r = self.current()
        if r.phase != "label":
            raise HTTPError(409, f"round {r.number} is not open for labels (phase {r.phase})")
        return r

    # ---- audio

    def audio(self, handle: str) -> bytes:
        """The clip of `handle` as WAV, at most `MAX_DURATION_S` of it (19 MB)."""
        import numpy as np
        import soundfile as sf

        from after.data.audio import MAX_DURATION_S, SAMPLE_RATE, load_audio

        clip = self.current().clip(handle)
        try:
            wave = load_audio(self.run.manifest[clip].path, max_duration_s=MAX_DURATION_S)
        except AudioError as e:
            raise HTTPError(500, f"clip {handle}: {e.reason}; see after validate") from None
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

    def advance_problem(self) -> str | None:
        """Why training the last round failed, when it did: the error line of its log (never
        its other lines, which hold scores)."""
        if self._advance is None or self._advance.poll() in (None, 0):
            return None
        path = self.run_dir / ADVANCE_LOG
        lines = path.read_text(errors="replace").splitlines()
        errors = [x for x in lines if x.startswith("error:")]
        return errors[-1] if errors else f"training stopped; see {path}"


def _estimate(state: LoopState) -> str:
    """The latest round's audit estimate in words ("" before one): the run's owner sees it on
    the page; annotators never do (a person who sees a score may label toward it)."""
    from after.metrics import describe_audit

    last = state.rounds[-1] if state.rounds else {}
    if "audit_n" not in last:
        return ""
    return f"round {last['round']}'s model: {describe_audit(last)}"


# ---- HTTP ----------------------------------------------------------------------------------------


def _annotator(value: Any) -> str:
    try:
        return check_annotator(value)
    except AfterError as e:
        raise HTTPError(400, str(e)) from None


async def _json_body(request: Request) -> dict[str, Any]:
    body = b""
    try:
        with anyio.fail_after(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    raise HTTPError(413, f"request body over {MAX_BODY} bytes")
    except TimeoutError:
        raise HTTPError(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, 5000-digit numbers, deep nesting
        raise HTTPError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return data


def read_guidelines(path: str | os.PathLike[str]) -> str:
    """Annotation guidelines to show on the page (plain text or Markdown, shown as written)."""
    from after.io import read_text_file

    text = read_text_file(path, "give a UTF-8 text or Markdown file of guidelines")
    if len(text) > MAX_GUIDELINES:
        raise AfterError(
            f"{path}: {len(text)} characters; guidelines are shown beside every clip, keep them "
            f"under {MAX_GUIDELINES} (link to a longer document from them)"
        )
    return text


def create_app(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    show_guess: bool = False,
    owner_key: str | None = None,
    guidelines: str = "",
) -> Starlette:
    """The ASGI app for one run folder. Refuses a non-loopback `host` without a token, and a
    weak token or owner key anywhere. Whoever opened the page with `?owner=OWNER_KEY` may train
    the next round; without an owner key nobody may from the page. Everyone sees `guidelines`."""
    for name, value in (("token", token), ("owner key", owner_key)):
        if value and not TOKEN.fullmatch(value):
            raise AfterError(
                f"a {name} must be at least 16 characters of A-Z, a-z, 0-9 and . _ ~ -; leave "
                "it out and after label serve makes a strong one"
            )
    if not is_loopback(host) and not token:
        raise AfterError(
            f"binding {host} would let anyone on the network read the audio and write labels; "
            "give a token (after label serve makes one for you), or bind 127.0.0.1"
        )
    session = LabelingSession(
        run_dir, show_guess=show_guess, wait_s=WRITE_WAIT_S, read_wait_s=READ_WAIT_S
    )
    page = PAGE.read_text()
    one_writer = anyio.Lock()

    async def write(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a store write in a thread, one at a time: while another process holds the
        store's lock, waiting writers hold no thread (reads keep answering) and give up after
        `WRITE_WAIT_S`."""
        try:
            with anyio.fail_after(WRITE_WAIT_S):
                await one_writer.acquire()
        except TimeoutError:
            raise StoreBusy(
                f"the label store has been busy for over {WRITE_WAIT_S:g} s (another process "
                "holds its lock); nothing was stored, try again"
            ) from None
        try:
            return await run_in_threadpool(fn, *args, **kw)
        finally:
            one_writer.release()

    def key(request: Request) -> str:
        return request.cookies.get(KEY_COOKIE, "")

    def is_owner(request: Request) -> bool:
        given = request.cookies.get(OWNER_COOKIE, "")
        return bool(owner_key) and secrets.compare_digest(given.encode(), str(owner_key).encode())

    async def index(request: Request) -> Response:
        response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if token and request.query_params.get("token") == token:
            response.set_cookie("after_token", token, httponly=True, samesite="strict")
        if owner_key and request.query_params.get("owner") == owner_key:
            response.set_cookie(OWNER_COOKIE, owner_key, httponly=True, samesite="strict")
        if not key(request):
            response.set_cookie(
                KEY_COOKIE,
                secrets.token_urlsafe(18),
                max_age=365 * 24 * 3600,
                httponly=True,
                samesite="strict",
            )
        return response

    async def info(request: Request) -> Response:
        p = await run_in_threadpool(session.progress, request.query_params.get("annotator"))
        owner = is_owner(request)
        return JSONResponse(
            {
                "run": session.run_dir.name,
                "labels": session.labels,
                "min_votes": session.min_votes,
                "show_guess": session.show_guess,
                "guidelines": guidelines,
                "owner": owner,
                **({"resume_command": f"after run --resume {session.run_dir}"} if owner else {}),
                **p,
                **({"estimate": session.current().estimate} if owner else {}),
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
        handle = "clip" in data
        clip, label = data.get("clip" if handle else "clip_id"), data.get("label")
        if not isinstance(clip, str):
            raise HTTPError(400, "give the clip (or clip_id) as a string")
        if label is not None and not isinstance(label, str):
            raise HTTPError(400, "label must be a string, or null to skip")
        await write(session.answer, name, clip, label, handle=handle, key=key(request))
        return JSONResponse({"stored": True, **await progress_after_write(name)})

    async def undo(request: Request) -> Response:
        name = _annotator((await _json_body(request)).get("annotator"))
        clip = await write(session.undo, name, key=key(request))
        return JSONResponse({"clip": clip, **await progress_after_write(name)})

    async def progress_after_write(name: str) -> dict[str, Any]:
        """The progress after a write that succeeded; if the store cannot be read just then
        (another process holds it), the write still stands: say so, never answer an error."""
        try:
            return {"progress": await run_in_threadpool(session.progress, name)}
        except AfterError as e:
            return {"progress": None, "note": f"stored; progress not available now ({e})"}

    async def audio(request: Request) -> Response:
        data = await run_in_threadpool(session.audio, request.path_params["clip"])
        return Response(data, media_type="audio/wav", headers={"Cache-Control": "private"})

    async def advance(request: Request) -> Response:
        await _json_body(request)
        if not is_owner(request):
            raise HTTPError(
                403,
                "only the run's owner trains the next round (from the owner URL that after label "
                "serve printed)",
            )
        await run_in_threadpool(session.advance)
        return JSONResponse({"started": True}, status_code=202)

    async def status(request: Request) -> Response:
        p = await run_in_threadpool(session.progress)
        owner = is_owner(request)
        problem = session.advance_problem() if owner else None
        estimate = {"estimate": session.current().estimate} if owner else {}
        return JSONResponse({**p, "problem": problem, **estimate})

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPError):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if isinstance(exc, ClipTaken):
            return JSONResponse({"error": str(exc)}, status_code=409)
        if isinstance(exc, NameInUse):
            return JSONResponse({"error": str(exc)}, status_code=403)
        # The store could not write (locked by another process, disk full, permissions, a
        # damaged file): nothing was stored, earlier answers are intact, the client may retry.
        message = os_error_message(exc) if isinstance(exc, OSError) else str(exc)
        return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "5"})

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/session", info),
            Route("/api/next", next_clip),
            Route("/api/answers", answers, methods=["POST"]),
            Route("/api/undo", undo, methods=["POST"]),
            Route("/api/audio/{clip:path}", audio),
            Route("/api/advance", advance, methods=["POST"]),
            Route("/api/status", status),
        ],
        exception_handlers={HTTPError: on_error, AfterError: on_error, OSError: on_error},
    )
    app.state.session = session
    return Guard(app, token=token, check_host=is_loopback(host))  # type: ignore[return-value]


class Guard:
    """Checks every request before the app sees it: Host (loopback binds), token (other
    binds), and for writes a JSON content type, a same-origin Origin and a bounded length. Every
    response carries `SECURITY_HEADERS`."""

    def __init__(self, app: ASGIApp, *, token: str | None, check_host: bool) -> None:
        self.app, self.token, self.check_host = app, token, check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        request = Request(scope)
        problem = self._check(request)
        if problem is not None:
            status, message = problem
            response = JSONResponse({"error": message}, status_code=status)
            await response(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _check(self, request: Request) -> tuple[int, str] | None:
        host = request.headers.get("host", "")
        if self.check_host:
            match = _HOST.fullmatch(host)
            name = match and (match["v6"] or match["name"])
            if not name or not is_loopback(name):
                return 421, f"unexpected Host {quoted(host)}: this server answers on localhost only"
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
                return 403, f"cross-origin request from {quoted(origin)} refused"
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                return 413, f"request body over {MAX_BODY} bytes"
        return None


class GuardedConnection(H11Protocol):
    """uvicorn's HTTP/1.1 connection with the limits uvicorn lacks (without them a few hundred
    idle connections lock every person out, before any token is checked): a connection that has
    no request in progress `HEADER_TIMEOUT_S` after it opened or after its last response is
    closed, and when more than `MAX_CONNECTIONS` are open the one idle the longest is closed
    (the newest, if all are busy)."""

    _deadline: asyncio.TimerHandle | None = None
    _idle_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > MAX_CONNECTIONS:
            idle = [c for c in self.connections if isinstance(c, GuardedConnection) and c._idle()]
            (min(idle, key=lambda c: c._idle_since) if idle else self).transport.close()

    def _idle(self) -> bool:
        """No request in the app, so closing loses nothing (a half-sent one is the client's),
        and not closed already."""
        if self.transport.is_closing():
            return False
        return self.cycle is None or self.cycle.response_complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._idle_since = self.loop.time()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._expire)

    def _expire(self) -> None:
        if self._idle():
            self.transport.close()


def make_server(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    """The uvicorn server that `serve` runs, with `GuardedConnection` and `KEEP_ALIVE_S`."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        http=GuardedConnection,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    return uvicorn.Server(config)


@contextmanager
def serving(run_dir: str | os.PathLike[str], address: str) -> Iterator[None]:
    """Hold the run's serving lock (`serve.lock`, which records `address`) while the block
    runs: two servers on one run would hand the same clip to two people. A second one is
    refused with the first one's address. The lock goes with the process, even on kill -9."""
    with held_lock(
        RunFolder(run_dir).serve_lock,
        f"{address} (pid {os.getpid()})\n",
        lambda holder: (
            f"{run_dir}: another after label serve serves this run already, at "
            f"{holder or 'an unknown address'}; open that one, or stop it first"
        ),
    ):
        yield


def serve(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    show_guess: bool = False,
    owner_key: str | None = None,
    guidelines: str = "",
    announce: Callable[[], None] | None = None,
) -> None:
    """Run the app with uvicorn until interrupted, as the run's only server; `announce` is
    called once the run is ours (to print the addresses)."""
    with serving(run_dir, f"http://{url_host(host)}:{port}/"):
        app = create_app(
            run_dir,
            host=host,
            token=token,
            show_guess=show_guess,
            owner_key=owner_key,
            guidelines=guidelines,
        )
        if announce is not None:
            announce()
        make_server(app, host, port).run()
