"""`after predict`: classify audio files of any length, each on its own.

Every file is checked first as `after prepare` checks clips (in constant memory), so a bad file is
reported and skipped while the others are classified, `FILES_PER_PASS` at a time; a folder stands
for the audio files in it. A file longer
than the model's evaluation window (`TrainConfig.max_eval_seconds`) is cut into equal consecutive
windows of at most that length, classified `WINDOWS_PER_PASS` at a time: memory does not grow with
the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import soundfile as sf

from after.config import TrainConfig
from after.data.audio import SAMPLE_RATE, audio_windows, inspect_audio
from after.data.manifest import Manifest, Utterance
from after.errors import AudioError
from after.models.classifier import Classifier

FILES_PER_PASS = 16
WINDOWS_PER_PASS = 4  # 30 s each: a pass of them costs what evaluating 4 long clips does


def predict_files(
    clf: Classifier,
    files: list[Path],
    *,
    on_error: Callable[[AudioError], None],
    config: TrainConfig | None = None,
    speaker_by: str = "folder",
    min_duration_s: float = 0.25,
    silence_dbfs: float = -60.0,
) -> Iterator[dict[str, Any]]:
    """One record per file, or per window of a long file: `file`, `label`, `scores` (label ->
    probability) and, for windows, `start_s` and `end_s`. A file that cannot be used goes to
    `on_error` and yields nothing: it is checked as `after prepare` checks clips, shorter than
    `min_duration_s` or with its loudest 50 ms below `silence_dbfs` is unusable (the fixes
    name `after predict`'s options).

    A model on speaker-standardised features (`FeatureHead.view` "speaker") standardises each
    speaker's files on all of that speaker's files given: with `speaker_by` "folder" the files
    of one folder are one speaker's, with "file" each file stands alone (its statistics are then
    the training ones, `after.models.linear.SPEAKER_PRIOR_CLIPS`). Such a model classifies the
    short files in one pass, after the windows of the long ones, so that a speaker's statistics
    cover every file of theirs; a window of a long file stands alone."""
    if speaker_by not in ("folder", "file"):
        raise ValueError(f"speaker_by={speaker_by!r}: folder or file")
    config = config or TrainConfig(cache_cnn=False)
    per_pass = FILES_PER_PASS if getattr(clf.module, "view", "clip") == "clip" else None
    short: list[Path] = []  # checked, waiting to be classified together

    def speaker(path: Path) -> str:
        return str(path.resolve().parent) if speaker_by == "folder" else str(path)

    def classify_short() -> Iterator[dict[str, Any]]:
        probs = _classify(clf, [str(p) for p in short], config, list(map(speaker, short)))
        yield from (_record(clf, p, x) for p, x in zip(short, probs, strict=True))
        short.clear()

    for path in files:
        try:
            info = inspect_audio(
                path,
                max_duration_s=None,
                min_duration_s=min_duration_s,
                silence_dbfs=silence_dbfs,
            )
        except AudioError as e:
            on_error(_with_fix(e))
            continue
        if info.duration_s <= config.max_eval_seconds:
            short.append(path)
            if len(short) == per_pass:
                yield from classify_short()
            continue
        if per_pass is not None:  # a speaker-view model classifies every short file together
            yield from classify_short()
        try:
            yield from _windows(clf, path, config)
        except AudioError as e:  # changed since it was checked
            on_error(_with_fix(e))
    yield from classify_short()


def audio_files(paths: list[Path], *, on_error: Callable[[AudioError], None]) -> list[Path]:
    """What to classify: each path that is not a folder as it is (checked later), and for a
    folder the audio files directly inside it (by extension, sorted); a folder with none goes to
    `on_error`."""
    from after.data.corpora._common import AUDIO_EXTENSIONS, list_audio

    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = list_audio(path)
        if not found:
            kinds = ", ".join(AUDIO_EXTENSIONS)
            on_error(
                AudioError(
                    str(path),
                    "not_audio",
                    f"a folder with no audio file ({kinds}) directly inside",
                    "give audio files, or the folder that holds them",
                )
            )
        out.extend(found)
    return out


def _with_fix(e: AudioError) -> AudioError:
    """`e` with a fix that suits a file given to predict (not a corpus clip of a manifest)."""
    if e.reason != "missing":
        return e
    fix = "check the path (a relative one is read from the current folder)"
    return AudioError(e.path, e.reason, e.detail, fix)


def _windows(clf: Classifier, path: Path, config: TrainConfig) -> Iterator[dict[str, Any]]:
    windows = audio_windows(path, config.max_eval_seconds)
    with tempfile.TemporaryDirectory(prefix="after-predict-") as tmp:
        while True:
            group = []
            for k, (start, end, wave) in zip(range(WINDOWS_PER_PASS), windows, strict=False):
                clip = os.path.join(tmp, f"{k}.wav")
                sf.write(clip, wave, SAMPLE_RATE, subtype="FLOAT")  # exact: no requantising
                group.append((start, end, clip))
            if not group:
                return
            probs = _classify(clf, [clip for _, _, clip in group], config)
            for (start, end, _), p in zip(group, probs, strict=True):
                yield {**_record(clf, path, p), "start_s": round(start, 3), "end_s": round(end, 3)}


def _classify(
    clf: Classifier, paths: list[str], config: TrainConfig, speakers: list[str] | None = None
) -> Any:
    """Class probabilities of `paths`, each of `speakers` (default: each path alone)."""
    from after.inference import predict

    if not paths:
        return []
    speakers = speakers or [f"clip{k}" for k in range(len(paths))]
    m = Manifest(
        Utterance(f"clip{k}", p, None, s, "predict")
        for k, (p, s) in enumerate(zip(paths, speakers, strict=True))
    )
    return predict(clf, m, m.ids, config=config)


def _record(clf: Classifier, path: Path, probs: Any) -> dict[str, Any]:
    scores = {label: round(float(x), 6) for label, x in zip(clf.labels, probs, strict=True)}
    return {"file": str(path), "label": clf.labels[int(probs.argmax())], "scores": scores}
