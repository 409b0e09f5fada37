"""Your own data: a CSV listing the clips, or a folder with one sub-folder per label.

`prepare_csv` reads a CSV with columns `path,label,speaker` (optionally `id,corpus,session,
duration_s,votes,split`); see `Manifest.from_csv`.

`prepare_folder` reads a folder-per-label layout, in one of two forms::

    <corpus_dir>/<label>/<speaker>/<clip>.wav     nested: the speaker is the sub-folder
    <corpus_dir>/<label>/<clip>.wav               flat: the speaker comes from the file name

- label: the label folder's name, as is.
- speaker: `<corpus>_` + the speaker sub-folder's name (nested), or + the `speaker` group of
  `speaker_regex` searched in the file stem (flat), e.g. `(?P<speaker>\\d+)_` for `07_take3.wav`.
  Files in a flat layout whose stem the regex does not match are skipped and counted. Folders
  deeper than `<label>/<speaker>/` are not read.
- corpus: the name of `corpus_dir`. No sessions, no official split, no votes.
- id: `<corpus>_<stem>` (flat) or `<corpus>_<speaker>_<stem>` (nested, where clip names often
  repeat across speakers). The label is not part of the id, so moving a clip to another label
  folder keeps its id. Ids must come out unique; the manifest names any two clips that clash.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from after.data.corpora._common import CorpusInfo, Skipped, list_audio, list_dirs, make_id
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError, LayoutError

_LAYOUT = "<corpus_dir>/<label>/<speaker>/<clip>.wav, or <corpus_dir>/<label>/<clip>.wav"


def prepare_csv(csv_path: str | os.PathLike[str], corpus: str | None = None) -> Manifest:
    """A manifest from a CSV of clips (`path,label,speaker`, ...; paths relative to the CSV's
    folder). `corpus` defaults to the CSV's corpus column, else the CSV folder's name."""
    return Manifest.from_csv(csv_path, corpus=corpus)


def prepare_folder(
    corpus_dir: str | os.PathLike[str], speaker_regex: str | None = None
) -> Manifest:
    """A manifest from a folder with one sub-folder per label (see the module docstring).

    `speaker_regex` (a regular expression with a named group `speaker`, searched in each file
    stem) is needed when clips lie directly in the label folders.
    """
    name = Path(os.path.abspath(Path(corpus_dir).expanduser())).name
    info = CorpusInfo(
        name=name,
        instructions="this is your own data: sort the clips into one folder per label",
        layout=_LAYOUT,
    )
    root = info.root(corpus_dir)
    pattern = _compile(speaker_regex)
    label_dirs = list_dirs(root)
    if not label_dirs:
        raise LayoutError(f"{root}: no label folders found; expected {_LAYOUT}")
    skipped = Skipped()
    items = []
    for label_dir in label_dirs:
        flat = list_audio(label_dir)
        if flat:
            if pattern is None:
                raise LayoutError(
                    f"{flat[0]}: clips lie directly in the label folder {label_dir}, so their "
                    "speaker is unknown. Either move them into one sub-folder per speaker "
                    f"({label_dir}/<speaker>/{flat[0].name}), or pass speaker_regex, a regular "
                    "expression whose group 'speaker' finds it in the file name, e.g. "
                    "'^(?P<speaker>[^_]+)_'"
                )
            for path in flat:
                match = pattern.search(path.stem)
                if match is None or not match["speaker"]:
                    skipped.skip("speaker_regex finds no speaker in the file name", path.name)
                    continue
                items.append(_utterance(info.name, path, label_dir.name, match["speaker"], ()))
        for speaker_dir in list_dirs(label_dir):
            speaker = speaker_dir.name
            for path in list_audio(speaker_dir):
                items.append(_utterance(info.name, path, label_dir.name, speaker, (speaker,)))
    return info.manifest(root, items, skipped)


def _utterance(
    corpus: str, path: Path, label: str, speaker: str, id_parts: tuple[str, ...]
) -> Utterance:
    return Utterance(
        id=make_id(corpus, *id_parts, path.stem),
        path=str(path),
        label=label,
        speaker=make_id(corpus, speaker),
        corpus=corpus,
    )


def _compile(speaker_regex: str | None) -> re.Pattern[str] | None:
    if speaker_regex is None:
        return None
    try:
        pattern = re.compile(speaker_regex)
    except re.error as e:
        raise AfterError(f"speaker_regex {speaker_regex!r} is not a valid regex: {e}") from None
    if "speaker" not in pattern.groupindex:
        raise AfterError(
            f"speaker_regex {speaker_regex!r} has no group named 'speaker'; "
            "write it like '^(?P<speaker>[^_]+)_'"
        )
    return pattern
