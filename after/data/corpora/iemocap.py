"""IEMOCAP, the Interactive Emotional Dyadic Motion Capture database: 10 English-speaking actors in
5 dyadic sessions (one woman and one man each), improvised and scripted dialogues, ~12 hours.

Expected layout (the release folder `IEMOCAP_full_release`, or the folder that contains it)::

    <corpus_dir>/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt
    <corpus_dir>/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    ...
    <corpus_dir>/Session5/...

Each EmoEvaluation file has one block per utterance: a summary line with the consensus category,
then one line per annotator and their categories, e.g.::

    [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]
    C-E2:	Neutral state;	()
    C-E3:	Frustration; Anger;	()
    C-F1:	Neutral state;	()

- label: the consensus category through `LABELS`, the usual 4-class setup: "exc" (excited) is
  merged into "hap", and every other category (frustration, surprise, fear, disgust, other, and
  "xxx" = no majority) is left out. Labels keep IEMOCAP's own short names.
- votes: for each of our labels, how many evaluators (`C-E*` lines) chose a category that maps to
  it through `VOTE_LABELS`, each evaluator counted at most once per label. The actors'
  self-evaluations (`C-F*`, `C-M*`) are not votes: the consensus was formed without them.
- session: `Ses01` ... `Ses05`, from the utterance name.
- speaker: `iemocap_` + session + the gender letter of the utterance suffix: in dialogue
  `Ses01F_impro01` the line `Ses01F_impro01_M003` is spoken by the man, `iemocap_Ses01_M`.
  Leave-one-session-out is the usual speaker-independent protocol. No official split.
- id: `iemocap_<utterance name>`, e.g. `iemocap_Ses01F_impro01_F000`.

Get it: https://sail.usc.edu/iemocap/ (request form; research licence). Cite: C. Busso, M. Bulut,
C.-C. Lee, A. Kazemzadeh, E. Mower, S. Kim, J. N. Chang, S. Lee, S. S. Narayanan, "IEMOCAP:
Interactive emotional dyadic motion capture database", Language Resources and Evaluation 42, 2008.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from after.data.corpora._common import (
    CorpusInfo,
    Skipped,
    audio_by_stem,
    make_id,
    read_text,
    require_dir,
)
from after.data.manifest import Manifest, Utterance

INFO = CorpusInfo(
    name="iemocap",
    instructions="request IEMOCAP at https://sail.usc.edu/iemocap/iemocap_release.htm and unpack "
    "IEMOCAP_full_release",
    layout="<corpus_dir>/Session{1..5}/dialog/EmoEvaluation/*.txt and "
    "<corpus_dir>/Session{1..5}/sentences/wav/<dialogue>/<utterance>.wav",
)

RELEASE_DIR = "IEMOCAP_full_release"
NUM_SESSIONS = 5

LABELS = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}

# Annotator categories (as written in the C-* lines) -> our labels.
VOTE_LABELS = {
    "Anger": "ang",
    "Happiness": "hap",
    "Excited": "hap",
    "Neutral state": "neu",
    "Sadness": "sad",
}

_SUMMARY = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<utt>\S+)\s+(?P<category>\S+)")
_ANNOTATOR = re.compile(r"C-(?P<annotator>[A-Z]+\d*):(?P<categories>[^(]*)")
_UTTERANCE = re.compile(r"(?P<session>Ses\d{2})[FM]_\S+_(?P<gender>[FM])\d{3}")


@dataclass
class _Block:
    """One utterance's summary line and its evaluators' categories."""

    utt: str
    category: str
    voters: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def votes(self) -> dict[str, int] | None:
        counts = {label: len(who) for label, who in sorted(self.voters.items())}
        return counts or None


def prepare_iemocap(corpus_dir: str | os.PathLike[str]) -> Manifest:
    """A 4-class manifest of IEMOCAP with evaluator votes (see the module docstring)."""
    root = INFO.root(corpus_dir)
    if not (root / "Session1").is_dir() and (root / RELEASE_DIR).is_dir():
        root = root / RELEASE_DIR
    skipped = Skipped()
    items = []
    for n in range(1, NUM_SESSIONS + 1):
        session = root / f"Session{n}"
        eval_dir = require_dir(
            session / "dialog" / "EmoEvaluation", "the label files, e.g. Ses01F_impro01.txt"
        )
        wav_dir = require_dir(
            session / "sentences" / "wav", "one folder of utterance wavs per dialogue"
        )
        for label_file in sorted(eval_dir.glob("*.txt")):
            if label_file.name.startswith("."):
                continue
            audio = audio_by_stem(wav_dir / label_file.stem)
            for block in _read_blocks(label_file):
                utt = _utterance(block, audio, skipped)
                if utt is not None:
                    items.append(utt)
    return INFO.manifest(root, items, skipped)


def _read_blocks(path: Path) -> list[_Block]:
    """The utterance blocks of one EmoEvaluation file, in file order."""
    blocks: list[_Block] = []
    for line in read_text(path).splitlines():
        summary = _SUMMARY.match(line)
        if summary is not None:
            blocks.append(_Block(summary["utt"], summary["category"]))
            continue
        annotator = _ANNOTATOR.match(line)
        # Only evaluators (C-E1, C-E2, ...) vote; C-F1 / C-M1 are the actors' self-evaluations.
        if annotator is None or not blocks or not annotator["annotator"].startswith("E"):
            continue
        for category in annotator["categories"].split(";"):
            label = VOTE_LABELS.get(category.strip())
            if label is not None:
                blocks[-1].voters[label].add(annotator["annotator"])
    return blocks


def _utterance(block: _Block, audio: dict[str, Path], skipped: Skipped) -> Utterance | None:
    match = _UTTERANCE.fullmatch(block.utt)
    if match is None:
        skipped.skip("utterance name is not like Ses01F_impro01_F000", block.utt)
        return None
    if block.category not in LABELS:
        skipped.drop("category outside ang/hap/exc/neu/sad", block.utt)
        return None
    if block.utt not in audio:
        skipped.skip("labeled utterance has no audio file", block.utt)
        return None
    return Utterance(
        id=make_id(INFO.name, block.utt),
        path=str(audio[block.utt]),
        label=LABELS[block.category],
        speaker=make_id(INFO.name, match["session"], match["gender"]),
        corpus=INFO.name,
        session=match["session"],
        votes=block.votes(),
    )
