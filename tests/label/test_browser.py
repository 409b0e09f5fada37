"""End to end in a real headless Chromium: a person labels a round with the keyboard, the
answers land in SQLite, and the page's button trains the next round."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from after.label.app import create_app, read_guidelines
from after.label.store import LabelStore
from after.loop.runner import Run
from after.loop.state import LoopState

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture
def browser() -> Any:
    """Debian's Chromium driven by Playwright (no browser download). Skips where it is absent,
    except in CI (AFTER_REQUIRE_BROWSER=1)."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("AFTER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} not found; install Debian's chromium (see .ci/run)")
        pytest.skip(f"{CHROMIUM} not found")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.mark.slow
def test_label_a_round_by_keyboard_then_train_the_next(
    labeling: tuple[Run, LoopState], serve: Any, browser: Any, tmp_path: Path
) -> None:
    run, state = labeling
    labels = run.manifest.labels
    queried = list(state.pending)
    guide = tmp_path / "guide.md"
    guide.write_text("anger: a raised, tense voice\n<script>alert(1)</script>\n")
    owner = "owner-key-0123456789"
    app = create_app(run.run_dir, owner_key=owner, guidelines=read_guidelines(guide))
    with serve(app) as url:
        page = browser.new_page(viewport={"width": 900, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.fill("#name", "alice")
        page.press("#name", "Enter")
        page.wait_for_selector("#clip:not([hidden])")
        assert page.inner_text("#clip-title") == "Clip 1 of this round"
        # Guidelines shown as text (never as HTML); the subtitle counts clips, then classes.
        page.click("#guidelines summary")
        assert page.inner_text("#guidelines-text") == guide.read_text()
        assert "round 0: 6 clips to label · 4 classes" in page.inner_text("#where")

        def clip_shown() -> str:
            return str(page.evaluate("decodeURIComponent(new URL($('player').src).pathname)"))

        def press(key: str, expect: str) -> None:
            page.keyboard.press(key)
            page.wait_for_function(
                "text => document.getElementById('message').textContent.startsWith(text)",
                arg=expect,
            )

        # The audio really plays: Chromium decoded the WAV the server made.
        page.wait_for_function("document.getElementById('player').duration > 0.3")
        page.keyboard.press("]")  # 1.25x
        assert page.evaluate("document.getElementById('player').playbackRate") == 1.25
        page.keyboard.press("[")
        page.keyboard.press("[")  # 0.75x
        assert page.evaluate("document.getElementById('player').playbackRate") == 0.75
        page.keyboard.press("r")  # replay: back to the start
        assert page.evaluate("document.getElementById('player').currentTime") < 0.5

        assert clip_shown() == "/api/audio/0.1"
        # The message names the clip it is about: the next clip is on screen by then.
        press("1", f"clip 1: saved “{labels[0]}”")
        assert clip_shown() == "/api/audio/0.2"
        press("2", f"clip 2: saved “{labels[1]}”")
        press("3", f"clip 3: saved “{labels[2]}”")  # a slip: undo it
        page.screenshot(path=str(tmp_path / "labeling.png"))
        press("u", "clip 3: undone")
        assert clip_shown() == "/api/audio/0.3"
        press("4", f"clip 3: saved “{labels[3]}”")
        press("0", "clip 4: skipped")  # cannot tell
        page.wait_for_function("document.getElementById('message').textContent === ''")
        press("2", f"clip 5: saved “{labels[1]}”")
        press("1", f"clip 6: saved “{labels[0]}”")
        page.wait_for_selector("#done:not([hidden])")
        # An annotator is thanked and told who trains the next round; no button, no scores.
        assert "fully labeled" in page.inner_text("#done-text")
        assert "when the run's owner trains it" in page.inner_text("#done-text")
        assert page.is_hidden("#advance") and "UA" not in page.inner_text("body")
        assert page.inner_text("#counts").startswith("Round 0: 6 of 6 clips done")
        page.screenshot(path=str(tmp_path / "round-done.png"))

        expected = [labels[0], labels[1], labels[3], None, labels[1], labels[0]]
        rows = {a.clip_id: a for a in LabelStore(run.run_dir).annotations(round=0)}
        assert {c: rows[c].label for c in queried} == dict(zip(queried, expected, strict=True))
        assert {a.annotator for a in rows.values()} == {"alice"}
        actions = [h["action"] for h in LabelStore(run.run_dir).history()]
        assert actions.count("undo") == 1 and actions.count("set") == 7

        page.goto(f"{url}/?owner={owner}")  # the owner's URL: the button is theirs
        page.wait_for_selector("#advance", state="visible")
        page.click("#advance")  # runs after run --resume in the background
        page.wait_for_selector("#clip:not([hidden])", timeout=180_000)
        assert page.inner_text("#counts").startswith("Round 1: 0 of 5 clips done")
        assert errors == []
        page.screenshot(path=str(tmp_path / "round-1.png"))

    state = LoopState.load(run.run_dir)
    assert state.round == 1 and state.phase == "label"
    assert state.labels == {c: x for c, x in zip(queried, expected, strict=True) if x}
    assert state.dropped == [queried[3]]
    assert state.rounds[0]["num_labeled"] == 5
    for name in ("labeling.png", "round-done.png", "round-1.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    print(f"screenshots: {tmp_path}")  # for a person to look at (pytest -s)


def test_page_loads_without_errors_after_the_run_is_done(
    labeling: tuple[Run, LoopState], serve: Any, browser: Any
) -> None:
    """Smoke: a finished run says so instead of offering clips."""
    run, _ = labeling
    state = LoopState.load(run.run_dir)
    state.phase, state.stopped_because = "done", "budget spent"
    state.save(run.run_dir)
    with serve(create_app(run.run_dir)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.evaluate("localStorage.setItem('after.annotator', 'bob')")
        page.reload()
        page.wait_for_selector("#done:not([hidden])")
        assert "finished (budget spent)" in page.inner_text("#done-text")
        assert page.is_hidden("#advance")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "bob" not in page.inner_text("#who"):
            time.sleep(0.05)
        assert "bob" in page.inner_text("#who")


@pytest.mark.slow
def test_the_audit_step_in_a_real_browser(
    make_run: Any, serve: Any, browser: Any, tmp_path: Path
) -> None:
    """A person labels round 0, whose queue holds the audit clips among the queries, by
    keyboard; the owner trains the next round from the page and reads the audit estimate there,
    with its interval and how many audit labels back it; an annotator's page shows no score."""
    run, state = make_run(tmp_path / "run", audit="4")
    labels = run.manifest.labels
    audit, queue = set(state.audit), list(state.pending)
    assert len(queue) == 10
    owner = "owner-key-0123456789"
    with serve(create_app(run.run_dir, owner_key=owner)) as url:
        page = browser.new_page(viewport={"width": 900, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/?owner={owner}")
        page.fill("#name", "alice")
        page.press("#name", "Enter")
        page.wait_for_selector("#clip:not([hidden])")
        assert "round 0: 10 clips to label" in page.inner_text("#where")
        assert page.is_hidden("#estimate")  # no round trained yet
        for k in range(10):
            # Every clip, audit or query, looks alike: "Clip k of this round", its audio.
            assert page.inner_text("#clip-title") == f"Clip {k + 1} of this round"
            page.keyboard.press(str(1 + k % 4))
            page.wait_for_function(
                "text => document.getElementById('message').textContent.startsWith(text)",
                arg=f"clip {k + 1}: saved",
            )
        page.wait_for_selector("#advance", state="visible")
        page.click("#advance")  # trains round 0 (after run --resume) in the background
        page.wait_for_selector("#estimate:not([hidden])", timeout=180_000)
        shown = page.inner_text("#estimate")
        assert re.fullmatch(
            r"Audit estimate: round 0's model: audit UA \d+\.\d% \[\d+\.\d-\d+\.\d\], "
            r"accuracy \d+\.\d% \[\d+\.\d-\d+\.\d\] \(4 audit labels\)\.",
            shown,
        ), shown
        page.wait_for_selector("#clip:not([hidden])", timeout=60_000)
        assert page.inner_text("#counts").startswith("Round 1: 0 of 4 clips done")
        page.screenshot(path=str(tmp_path / "owner-audit.png"))

        annotator = browser.new_page()
        annotator.goto(url + "/")
        annotator.fill("#name", "bob")
        annotator.press("#name", "Enter")
        annotator.wait_for_selector("#clip:not([hidden])")
        body = annotator.inner_text("body")
        assert annotator.is_hidden("#estimate") and "audit" not in body.lower()
        assert "UA" not in body
        assert errors == []
    pressed = {c: labels[k % 4] for k, c in enumerate(queue)}
    state = LoopState.load(run.run_dir)
    assert state.audit_labels == {c: pressed[c] for c in audit}  # kept apart from training
    assert state.labels == {c: pressed[c] for c in queue if c not in audit}
    assert state.rounds[0]["audit_n"] == 4 and state.rounds[0]["num_labeled"] == 6
