"""CREMA-D, the Crowd-sourced Emotional Multimodal Actors Dataset: 91 actors (48 male, 43 female,
aged 20-74, diverse ethnicities), 12 English sentences, 6 emotions; 7,442 clips.

Expected layout (the GitHub repository, cloned with git-lfs so the audio is real)::

    <corpus_dir>/AudioWAV/1001_DFA_ANG_XX.wav
    <corpus_dir>/finishedResponses.csv                    (optional: the per-rater responses;
    <corpus_dir>/processedResults/finishedResponses.csv    looked for in both places)

A file name is actor (4 digits) _ sentence (3 letters) _ intended emotion _ intensity (LO, MD, HI,
or XX unspecified).

- label: the intended (acted) emotion through `LABELS`.
- votes: when the ratings file is there, the number of raters choosing each emotion among the
  voice-only responses (`queryType` 1; the face-only and audio-visual ratings judged other
  stimuli). Rater codes map through `VOTE_LABELS`. Clips without voice-only responses get none.
- speaker: `crema-d_` + the actor, e.g. `crema-d_1001`. No sessions, no official split.
- id: `crema-d_<stem>`, e.g. `crema-d_1001_DFA_ANG_XX`.

Caveat: clip 1076_MTI_SAD_XX is known to hold no signal; the audio validation step rejects it.

Get it: https://github.com/CheyneyComputerScience/CREMA-D (ODbL; needs git-lfs). Cite: H. Cao,
D. G. Cooper, M. K. Keutmann, R. C. Gur, A. Nenkova, R. Verma, "CREMA-D: Crowd-sourced Emotional
Multimodal Actors Dataset", IEEE Trans. Affective Computing 5(4), 2014.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from after.data.corpora._common import (
    CorpusInfo,
    Skipped,
    list_audio,
    make_id,
    read_table,
    require_dir,
)
from after.data.manifest import Manifest, Utterance

INFO = CorpusInfo(
    name="crema-d",
    instructions="git lfs install && git clone https://github.com/CheyneyComputerScience/CREMA-D",
    layout="<corpus_dir>/AudioWAV/1001_DFA_ANG_XX.wav "
    "(+ optional <corpus_dir>/finishedResponses.csv for rater votes)",
)

LABELS = {
    "ANG": "anger",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happiness",
    "NEU": "neutral",
    "SAD": "sadness",
}

# Rater responses (`respEmo`) use one letter per emotion.
VOTE_LABELS = {
    "A": "anger",
    "D": "disgust",
    "F": "fear",
    "H": "happiness",
    "N": "neutral",
    "S": "sadness",
}

RATINGS_FILES = ("finishedResponses.csv", "processedResults/finishedResponses.csv")
VOICE_ONLY = "1"

_NAME = re.compile(
    r"(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})"
)


def prepare_crema_d(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A manifest of CREMA-D, with voice-only rater votes when the ratings file is present."""
    root = INFO.root(corpus_dir)
    audio_dir = require_dir(root / "AudioWAV", "the CREMA-D clips, e.g. 1001_DFA_ANG_XX.wav")
    votes = _read_votes(root)
    skipped = Skipped()
    items = []
    for path in list_audio(audio_dir):
        match = _NAME.fullmatch(path.stem)
        if match is None or match["emotion"] not in LABELS:
            skipped.skip("name is not like 1001_DFA_ANG_XX", path.name)
            continue
        items.append(
            Utterance(
                id=make_id(INFO.name, path.stem),
                path=str(path),
                label=LABELS[match["emotion"]],
                speaker=make_id(INFO.name, match["actor"]),
                corpus=INFO.name,
                votes=votes.get(path.stem),
            )
        )
    return INFO.manifest(root, items, skipped)


def _read_votes(root: Path) -> dict[str, dict[str, int]]:
    """clip stem -> {label: number of voice-only responses}; {} without a ratings file."""
    found = [root / name for name in RATINGS_FILES if (root / name).is_file()]
    if not found:
        return {}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in read_table(found[0], ("clipName", "queryType", "respEmo")):
        label = VOTE_LABELS.get(row["respEmo"])
        if row["queryType"] == VOICE_ONLY and label is not None:
            counts[Path(row["clipName"]).stem][label] += 1
    return {clip: dict(sorted(c.items())) for clip, c in counts.items()}
