"""EmoDB, the Berlin Database of Emotional Speech: 10 German actors (5 female, 5 male),
10 sentences, 7 emotions, 535 clips.

Expected layout (the original release; `audio/` instead of `wav/`, and FLAC, are accepted too;
when both folders exist, `wav/` is read)::

    <corpus_dir>/wav/03a01Fa.wav

A file name is speaker (2 digits), text (a01..b10), emotion letter, version letter: `03a01Fa` is
speaker 03 saying text a01 with happiness (F, "Freude"), take a.

- label: the 6th character through `LABELS` (German initials: W Wut, L Langeweile, E Ekel,
  A Angst, F Freude, T Trauer, N neutral).
- speaker: `emodb_` + the first two characters, e.g. `emodb_03`. No sessions, no official split,
  no votes (the published perception-test results are not per-clip annotator counts).
- id: `emodb_<stem>`, e.g. `emodb_03a01Fa`.

Get it: http://emodb.bilderbar.info/ (free for research). Cite: F. Burkhardt, A. Paeschke,
M. Rolfes, W. Sendlmeier, B. Weiss, "A database of German emotional speech", Interspeech 2005.
"""

from __future__ import annotations

import os
import re

from after.data.corpora._common import CorpusInfo, Skipped, list_audio, make_id
from after.data.manifest import Manifest, Utterance
from after.errors import LayoutError

INFO = CorpusInfo(
    name="emodb",
    instructions="download http://emodb.bilderbar.info/download/download.zip and unzip it",
    layout="<corpus_dir>/wav/03a01Fa.wav (or audio/ instead of wav/, .flac instead of .wav)",
)

LABELS = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}

AUDIO_DIRS = ("wav", "audio")

_NAME = re.compile(r"(?P<speaker>\d{2})(?P<text>[ab]\d{2})(?P<emotion>[A-Z])(?P<take>[a-z])")


def prepare_emodb(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A manifest of EmoDB from its folder (see the module docstring for the layout)."""
    root = INFO.root(corpus_dir)
    folders = [root / name for name in AUDIO_DIRS if (root / name).is_dir()]
    if not folders:
        raise LayoutError(
            f"{root / AUDIO_DIRS[0]}: not found (nor {root / AUDIO_DIRS[1]}); "
            "expected the EmoDB clips there, e.g. 03a01Fa.wav"
        )
    skipped = Skipped()
    items = []
    for path in list_audio(folders[0]):
        match = _NAME.fullmatch(path.stem)
        if match is None or match["emotion"] not in LABELS:
            skipped.skip("name is not like 03a01Fa", path.name)
            continue
        items.append(
            Utterance(
                id=make_id(INFO.name, path.stem),
                path=str(path),
                label=LABELS[match["emotion"]],
                speaker=make_id(INFO.name, match["speaker"]),
                corpus=INFO.name,
            )
        )
    return INFO.manifest(root, items, skipped)
