"""TESS, the Toronto Emotional Speech Set: 2 female Canadian English speakers, OAF (older, 64) and
YAF (younger, 26), say 200 target words ("Say the word ...") in 7 emotions; 2,800 clips.

Expected layout (one folder per speaker and emotion; folder names vary in case and spelling, e.g.
`OAF_Pleasant_surprise` and `YAF_pleasant_surprised`, so only the file name is parsed)::

    <corpus_dir>/OAF_angry/OAF_back_angry.wav
    ...
    <corpus_dir>/YAF_pleasant_surprised/YAF_back_ps.wav

- label: the last part of the file name (after speaker and word), any case, through `LABELS`.
- speaker: `tess_` + OAF or YAF, e.g. `tess_OAF`. No sessions, no official split, no votes.
- id: `tess_<stem>`, e.g. `tess_OAF_back_angry`.

Caveat: with only 2 speakers, a speaker-independent split trains on one voice and tests on the
other; results are not comparable with many-speaker corpora.

Get it: https://doi.org/10.5683/SP2/E8H2MF (Borealis, CC BY-NC-ND 4.0). Cite: M. K. Pichora-Fuller,
K. Dupuis, "Toronto emotional speech set (TESS)", Scholars Portal Dataverse, 2020.
"""

from __future__ import annotations

import os
import re

from after.data.corpora._common import CorpusInfo, Skipped, list_audio, list_dirs, make_id
from after.data.manifest import Manifest, Utterance
from after.errors import LayoutError

INFO = CorpusInfo(
    name="tess",
    instructions="download the TESS files from https://doi.org/10.5683/SP2/E8H2MF",
    layout="<corpus_dir>/<OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav, "
    "e.g. OAF_angry/OAF_back_angry.wav",
)

# Keys are lower case: file names differ in case and spell pleasant surprise three ways.
LABELS = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "ps": "surprise",
    "pleasant_surprise": "surprise",
    "pleasant_surprised": "surprise",
    "sad": "sadness",
}

_NAME = re.compile(r"(?P<speaker>[OY]AF)_(?P<word>[^_]+)_(?P<emotion>.+)", re.IGNORECASE)


def prepare_tess(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A manifest of TESS from its speaker/emotion folders (see the module docstring)."""
    root = INFO.root(corpus_dir)
    clips = [p for d in list_dirs(root) for p in list_audio(d)]
    if not clips:
        raise LayoutError(
            f"{root / 'OAF_angry'}: not found (no audio in any sub-folder of {root}); "
            "expected folders like OAF_angry/ holding OAF_back_angry.wav"
        )
    skipped = Skipped()
    items = []
    for path in clips:
        match = _NAME.fullmatch(path.stem)
        label = None if match is None else LABELS.get(match["emotion"].lower())
        if match is None or label is None:
            skipped.skip("name is not like OAF_back_angry", path.name)
            continue
        items.append(
            Utterance(
                id=make_id(INFO.name, path.stem),
                path=str(path),
                label=label,
                speaker=make_id(INFO.name, match["speaker"].upper()),
                corpus=INFO.name,
            )
        )
    return INFO.manifest(root, items, skipped)
