"""RAVDESS, the Ryerson Audio-Visual Database of Emotional Speech and Song: 24 North American
English actors (12 female, 12 male), 2 sentences, 8 emotions; 1,440 audio-only speech clips.

Expected layout (the "Audio_Speech_Actors_01-24" download)::

    <corpus_dir>/Actor_01/03-01-05-01-01-01-01.wav
    ...
    <corpus_dir>/Actor_24/...

A file name is seven 2-digit fields: modality - vocal channel - emotion - intensity - statement -
repetition - actor. Only modality 03 (audio-only) with vocal channel 01 (speech) is kept; songs
and video files are left out, so the song download may share the folders.

- label: the emotion field through `LABELS`.
- speaker: `ravdess_` + the actor field, e.g. `ravdess_12` (odd actors male, even female).
  No sessions, no official split, no votes (the validation ratings are not per-clip counts here).
- id: `ravdess_<stem>`, e.g. `ravdess_03-01-05-01-01-01-12`.

Get it: https://zenodo.org/record/1188976 (CC BY-NC-SA 4.0). Cite: S. R. Livingstone, F. A. Russo,
"The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS)", PLoS ONE 13(5), 2018.
"""

from __future__ import annotations

import os
import re

from after.data.corpora._common import CorpusInfo, Skipped, list_audio, list_dirs, make_id
from after.data.manifest import Manifest, Utterance
from after.errors import LayoutError

INFO = CorpusInfo(
    name="ravdess",
    instructions="download Audio_Speech_Actors_01-24.zip from https://zenodo.org/record/1188976 "
    "and unzip it",
    layout="<corpus_dir>/Actor_01/03-01-05-01-01-01-01.wav ... <corpus_dir>/Actor_24/...",
)

LABELS = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}

AUDIO_ONLY = "03"
SPEECH = "01"

_NAME = re.compile(
    r"(?P<modality>\d{2})-(?P<channel>\d{2})-(?P<emotion>\d{2})-(?P<intensity>\d{2})"
    r"-(?P<statement>\d{2})-(?P<repetition>\d{2})-(?P<actor>\d{2})"
)


def prepare_ravdess(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A manifest of the RAVDESS speech clips (see the module docstring for the layout)."""
    root = INFO.root(corpus_dir)
    actors = [d for d in list_dirs(root) if d.name.startswith("Actor_")]
    if not actors:
        raise LayoutError(
            f"{root / 'Actor_01'}: not found (no Actor_* folders in {root}); "
            "expected one folder per actor holding files like 03-01-05-01-01-01-01.wav"
        )
    skipped = Skipped()
    items = []
    for path in (p for actor in actors for p in list_audio(actor)):
        match = _NAME.fullmatch(path.stem)
        if match is None or match["emotion"] not in LABELS:
            skipped.skip("name is not like 03-01-05-01-01-01-01", path.name)
            continue
        if match["modality"] != AUDIO_ONLY or match["channel"] != SPEECH:
            skipped.drop("not audio-only speech (modality 03, vocal channel 01)", path.name)
            continue
        items.append(
            Utterance(
                id=make_id(INFO.name, path.stem),
                path=str(path),
                label=LABELS[match["emotion"]],
                speaker=make_id(INFO.name, match["actor"]),
                corpus=INFO.name,
            )
        )
    return INFO.manifest(root, items, skipped)
