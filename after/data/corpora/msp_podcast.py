"""MSP-Podcast: natural emotional speech from podcast recordings, English, thousands of speakers,
crowd-sourced labels; the largest SER corpus with an official partition (release 1.11+ layout).

Expected layout::

    <corpus_dir>/Labels/labels_consensus.csv
    <corpus_dir>/Audios/MSP-PODCAST_0001_0008.wav

`labels_consensus.csv` has the columns FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender,
Split_Set (FileName includes the extension; the other columns are ignored).

- label: EmoClass through `LABELS`; O (other) and X (no agreement) are left out.
- split: Split_Set through `SPLITS` (Train -> train, Development -> dev), and the test set chosen by
  `test_set` (default Test1) -> test. Rows of the other test sets (Test2: podcasts held out
  entirely; Test3: a small emotion-balanced set) keep split None, so they are in
  the manifest but in no official partition.
- speaker: `msp-podcast_` + SpkrID. Clips whose SpkrID is "Unknown" each get their own speaker,
  `msp-podcast_unknown_<stem>`: nothing says two of them share a voice, and one clip per speaker
  can never leak across a speaker-independent split, whereas one shared "unknown" speaker would
  lump strangers together. No sessions, no votes (the per-annotator labels are in
  labels_detailed.csv, which is not read).
- id: `msp-podcast_<stem>`, e.g. `msp-podcast_MSP-PODCAST_0001_0008`.

Get it: https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html (academic licence
agreement). Cite: R. Lotfian, C. Busso, "Building naturalistic emotionally balanced speech corpus
by retrieving emotional speech from existing podcast recordings", IEEE Trans. Affective Computing
10(4), 2019.
"""

from __future__ import annotations

import os
from pathlib import Path

from after.data.corpora._common import (
    CorpusInfo,
    Skipped,
    audio_by_stem,
    make_id,
    read_table,
    require_dir,
    require_file,
)
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError

INFO = CorpusInfo(
    name="msp-podcast",
    instructions="sign the licence agreement at "
    "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html, then unpack "
    "the release",
    layout="<corpus_dir>/Labels/labels_consensus.csv and <corpus_dir>/Audios/<FileName>",
)

LABELS = {
    "A": "anger",
    "S": "sadness",
    "H": "happiness",
    "U": "surprise",
    "F": "fear",
    "D": "disgust",
    "C": "contempt",
    "N": "neutral",
}

SPLITS = {"Train": "train", "Development": "dev"}
UNKNOWN_SPEAKER = "Unknown"

COLUMNS = ("FileName", "EmoClass", "SpkrID", "Split_Set")


def prepare_msp_podcast(corpus_dir: str | os.PathLike[str], *, test_set: str = "Test1") -> Manifest:
    """A manifest of MSP-Podcast with its official splits; `test_set` names the Split_Set value
    that becomes split "test" (Test1, Test2, ...)."""
    root = INFO.root(corpus_dir)
    labels_file = require_file(
        root / "Labels" / "labels_consensus.csv",
        "the consensus labels (FileName, EmoClass, ..., SpkrID, Split_Set)",
    )
    audio = audio_by_stem(require_dir(root / "Audios", "the clips named in labels_consensus.csv"))
    rows = read_table(labels_file, COLUMNS)
    split_sets = {row["Split_Set"] for row in rows}
    if test_set not in split_sets:
        raise AfterError(
            f"{labels_file}: no rows with Split_Set {test_set!r}; "
            f"choose test_set from {sorted(split_sets - set(SPLITS))}"
        )
    splits = {**SPLITS, test_set: "test"}
    skipped = Skipped()
    items = []
    for row in rows:
        stem = Path(row["FileName"]).stem
        label = LABELS.get(row["EmoClass"])
        if label is None:
            skipped.drop("EmoClass O (other), X (no agreement) or unknown", row["FileName"])
        elif stem not in audio:
            skipped.skip("labeled clip has no audio file in Audios/", row["FileName"])
        else:
            items.append(
                Utterance(
                    id=make_id(INFO.name, stem),
                    path=str(audio[stem]),
                    label=label,
                    speaker=_speaker(row["SpkrID"], stem),
                    corpus=INFO.name,
                    split=splits.get(row["Split_Set"]),
                )
            )
    return INFO.manifest(root, items, skipped)


def _speaker(speaker_id: str, stem: str) -> str:
    if not speaker_id or speaker_id == UNKNOWN_SPEAKER:
        return make_id(INFO.name, "unknown", stem)
    return make_id(INFO.name, speaker_id)
