"""MELD, the Multimodal EmotionLines Dataset: ~13.7k utterances from ~1.4k dialogues of the TV
series Friends, many speakers, 7 emotions, with an official train/dev/test partition.

MELD ships video (mp4). Convert it to audio first (16 kHz mono wav; flac works too), one folder
per split, keeping the file names. Expected layout after conversion::

    <corpus_dir>/train_sent_emo.csv   <corpus_dir>/train/dia0_utt0.wav
    <corpus_dir>/dev_sent_emo.csv     <corpus_dir>/dev/dia0_utt0.wav
    <corpus_dir>/test_sent_emo.csv    <corpus_dir>/test/dia0_utt0.wav

The mp4 folders of MELD.Raw are `train_splits/`, `dev_splits_complete/` and
`output_repeated_splits_test/`; when only those are there, `prepare_meld` stops with the ffmpeg
command that does the conversion. The CSVs are not always UTF-8; only their ASCII columns (Speaker,
Emotion, Dialogue_ID, Utterance_ID) are used.

- label: the Emotion column through `LABELS` (MELD's own names, kept).
- split: the CSV a row comes from (train, dev, test).
- speaker: `meld_` + the Speaker column (the character), spaces as "_", e.g. `meld_Joey`.
  Caveat: the main characters speak in all three official splits, so the official split is NOT
  speaker-independent, and many minor characters have only a line or two.
- id: `meld_<split>_dia<D>_utt<U>`, e.g. `meld_train_dia0_utt0` (the file names repeat in every
  split). No sessions, no votes (one label per utterance is published). Rows whose audio file is
  missing (a few mp4s in the release are broken or absent) are skipped and counted.

Get it: https://affective-meld.github.io/ (MELD.Raw.tar.gz). Cite: S. Poria,
D. Hazarika, N. Majumder, G. Naik, E. Cambria, R. Mihalcea, "MELD: A Multimodal Multi-Party
Dataset for Emotion Recognition in Conversations", ACL 2019.
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
    require_file,
)
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError, LayoutError

INFO = CorpusInfo(
    name="meld",
    instructions="download http://web.eecs.umich.edu/~mihalcea/downloads/MELD.Raw.tar.gz, unpack "
    "it and its train/dev/test archives, then convert the mp4 files to wav (see docs/corpora.md)",
    layout="<corpus_dir>/{train,dev,test}_sent_emo.csv and "
    "<corpus_dir>/{train,dev,test}/dia<D>_utt<U>.wav",
)

LABELS = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "joy": "joy",
    "neutral": "neutral",
    "sadness": "sadness",
    "surprise": "surprise",
}

# Our split name -> the folder of original mp4 files in MELD.Raw.
VIDEO_DIRS = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}

COLUMNS = ("Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def prepare_meld(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A manifest of MELD's converted audio with its official splits (see the module
    docstring)."""
    root = INFO.root(corpus_dir)
    skipped = Skipped()
    items = []
    for split in VIDEO_DIRS:
        table = require_file(root / f"{split}_sent_emo.csv", f"the MELD {split} labels")
        audio = audio_by_stem(_audio_dir(root, split))
        for row in read_table(table, COLUMNS):
            stem = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
            label = LABELS.get(row["Emotion"].lower())
            if label is None:
                skipped.skip(f"emotion not in {sorted(LABELS)}", f"{split}/{stem}")
            elif stem not in audio:
                skipped.skip("labeled utterance has no audio file", f"{split}/{stem}")
            else:
                items.append(
                    Utterance(
                        id=make_id(INFO.name, split, stem),
                        path=str(audio[stem]),
                        label=label,
                        speaker=make_id(INFO.name, row["Speaker"]),
                        corpus=INFO.name,
                        split=split,
                    )
                )
    return INFO.manifest(root, items, skipped)


def _conversion_command(root: Path, split: str) -> str:
    """The shell command that converts one split's mp4 files to 16 kHz mono wav."""
    return (
        f'cd "{root}" && mkdir -p {split} && for f in {VIDEO_DIRS[split]}/*.mp4; do '
        f'ffmpeg -nostdin -loglevel error -y -i "$f" -vn -ac 1 -ar 16000 '
        f'"{split}/$(basename "${{f%.mp4}}").wav"; done'
    )


def _audio_dir(root: Path, split: str) -> Path:
    """The folder of converted audio for `split`; explains the conversion when only the
    original mp4 folder is there."""
    folder = root / split
    if folder.is_dir():
        return folder
    if (root / VIDEO_DIRS[split]).is_dir():
        raise AfterError(
            f"{folder}: not found, but {root / VIDEO_DIRS[split]} holds MELD's original mp4 "
            f"files. Convert them to 16 kHz mono wav first (needs ffmpeg):\n"
            f"  {_conversion_command(root, split)}"
        )
    raise LayoutError(
        f"{folder}: not found; expected the {split} utterances converted to audio, "
        "e.g. dia0_utt0.wav"
    )
