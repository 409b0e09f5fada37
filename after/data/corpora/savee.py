"""SAVEE, Surrey Audio-Visual Expressed Emotion: 4 male British English speakers (DC, JE, JK, KL),
7 emotions, 120 clips each (480 in all).

Expected layout, either the original release::

    <corpus_dir>/AudioData/DC/a01.wav          (emotion code + 2-digit number)
    ...
    <corpus_dir>/AudioData/KL/su15.wav

or the flat copy found on some mirrors (used when `AudioData/` is absent)::

    <corpus_dir>/ALL/DC_a01.wav

- label: the emotion code (letters before the number) through `LABELS`.
- speaker: `savee_` + the speaker's initials, e.g. `savee_DC`. No sessions, no official split, no
  votes. With only 4 speakers, leave-one-speaker-out is the usual protocol.
- id: `savee_<speaker>_<stem>`, e.g. `savee_DC_a01` (stems like `a01` repeat for every speaker).

Get it: http://kahlan.eps.surrey.ac.uk/savee/ (registration; free for research). Cite:
S. Haq, P. J. B. Jackson, "Speaker-dependent audio-visual emotion recognition", AVSP 2009.
"""

from __future__ import annotations

import os
import re

from after.data.corpora._common import CorpusInfo, Skipped, list_audio, list_dirs, make_id
from after.data.manifest import Manifest, Utterance
from after.errors import LayoutError

INFO = CorpusInfo(
    name="savee",
    instructions="register at http://kahlan.eps.surrey.ac.uk/savee/ and download AudioData.zip",
    layout="<corpus_dir>/AudioData/<DC|JE|JK|KL>/a01.wav, or flat <corpus_dir>/ALL/DC_a01.wav",
)

LABELS = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "n": "neutral",
    "sa": "sadness",
    "su": "surprise",
}

# Both layouts are parsed as "<speaker>_<clip>": a nested file is named by its folder and stem.
_NAME = re.compile(r"(?P<speaker>[A-Z]{2})_(?P<emotion>[a-z]{1,2})(?P<number>\d{2})")


def prepare_savee(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A manifest of SAVEE from either layout (see the module docstring)."""
    root = INFO.root(corpus_dir)
    nested, flat = root / "AudioData", root / "ALL"
    if nested.is_dir():
        clips = [(f"{d.name}_{p.stem}", p) for d in list_dirs(nested) for p in list_audio(d)]
    elif flat.is_dir():
        clips = [(p.stem, p) for p in list_audio(flat)]
    else:
        raise LayoutError(
            f"{nested}: not found (nor {flat}); expected one folder per speaker "
            "(AudioData/DC/a01.wav) or a flat folder (ALL/DC_a01.wav)"
        )
    skipped = Skipped()
    items = []
    for name, path in clips:
        match = _NAME.fullmatch(name)
        if match is None or match["emotion"] not in LABELS:
            skipped.skip("name is not like DC/a01 or DC_a01 with a known emotion code", name)
            continue
        items.append(
            Utterance(
                id=make_id(INFO.name, name),
                path=str(path),
                label=LABELS[match["emotion"]],
                speaker=make_id(INFO.name, match["speaker"]),
                corpus=INFO.name,
            )
        )
    return INFO.manifest(root, items, skipped)
