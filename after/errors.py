"""The project's own error types.

Every error a user can cause (bad paths, bad files, bad manifests) is an `AfterError` whose message
names the item and the fix. The CLI prints these without a traceback; anything else is a bug.
"""

from __future__ import annotations


class AfterError(Exception):
    """A problem with the user's input or environment; the message says the fix."""


class Interrupted(BaseException):
    """Ctrl-C, raised by the command line's SIGINT handler (`after.cli.app`): not a
    KeyboardInterrupt, which click would turn into "Aborted!" (exit 1) before the entry point
    could say how to continue. A step it stops says so (`after.progress`)."""


class SettingsError(AfterError):
    """Settings out of range: `problems` maps each setting to its value and what it needs (a
    phrase that says the fix, "give 1 or more"), so that a caller can name the setting its own
    way (the command line names the option)."""

    def __init__(self, what: str, problems: dict[str, tuple[object, str]]) -> None:
        self.problems = problems
        each = [f"{name}={quoted(value)} ({need})" for name, (value, need) in problems.items()]
        super().__init__(f"invalid {what} setting(s): {', '.join(each)}")


class ManifestError(AfterError):
    """A manifest, CSV or folds file is malformed (missing column, duplicate id, unknown id, bad
    value)."""


class LayoutError(AfterError):
    """A corpus folder does not have the expected layout; the message names the missing path."""


class ManualDownloadRequired(AfterError):
    """The corpus must be obtained by the user (licence or registration); the message says how."""

    def __init__(self, corpus: str, instructions: str, expected: str, path: str = "") -> None:
        self.corpus = corpus
        where = f"nothing at {path}" if path else "the corpus is not at the given path"
        super().__init__(
            f"{corpus}: {where}, and it cannot be downloaded for you.\n"
            f"How to get it: {instructions}\n"
            f"Expected layout: {expected}"
        )


class AudioError(AfterError):
    """An audio file cannot be used. `reason` is one short code from `after.data.audio.REASONS`."""

    def __init__(self, path: str, reason: str, detail: str, fix: str) -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason} ({detail}); fix: {fix}")


class FoldError(AfterError):
    """Speaker-independent folds cannot be built as asked (too few speakers, speaker leak, unknown
    fold)."""


def cut(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters, saying how long it was: every value a message or a
    table echoes from a user's file (an id may be megabytes long) goes through here or
    `quoted`."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def quoted(value: object, limit: int = 80) -> str:
    """`repr(value)` for a message, cut to about `limit` characters: an id or a label from a file
    may be megabytes long, and a message must stay readable."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(str(value))} characters)"
