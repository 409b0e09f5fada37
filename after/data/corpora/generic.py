"""Your own data: a CSV listing the clips, or a folder of audio (sorted into label folders, or not
labeled at all).

`prepare_csv` reads a CSV with a `path` column and optionally `id,label,speaker,corpus,session,
duration_s,votes,split`; see `Manifest.from_csv`. Without a label column, `labels` gives the label
set (every clip is then unlabeled); without a speaker column, `speaker_regex` finds the speaker in
each path, else each clip is its own speaker.

`prepare_folder` reads a folder in one of these layouts::

    <corpus_dir>/<label>/<speaker>/<clip>.wav     labeled, nested: the speaker is the sub-folder
    <corpus_dir>/<label>/<clip>.wav               labeled, flat: the speaker from speaker_regex
    <corpus_dir>/**/<clip>.wav                    unlabeled (with `labels`): any depth

- label: the label folder's name, as is. With `labels` (the label set, declared in the manifest),
  a top-level folder named like one of them is that label's folder, and every other audio file,
  at any depth, is unlabeled: a folder of recordings nobody has labeled yet, which people label
  with `after run --oracle human`. Without `labels` every top-level folder is a label.
- speaker: `<corpus>_` + the speaker sub-folder's name (labeled, nested), or + what
  `speaker_regex` finds in the file's path (`after.data.manifest.speaker_of_path`: its group
  `speaker` or its first group, searched in the file name, then in the path under `corpus_dir`;
  e.g. `^(\\d+)_` for `07_take3.wav`, `^([^/]+)/` for `alice/take3.wav`). Files it finds no
  speaker in are skipped and counted; a regex that finds none at all is an error. Unlabeled files
  without a regex have an unknown speaker: each is its own.
- corpus: the name of `corpus_dir`. No sessions, no official split, no votes.
- id: `<corpus>_<stem>` (labeled, flat), `<corpus>_<speaker>_<stem>` (labeled, nested, where clip
  names often repeat across speakers), `<corpus>_<stem>` (unlabeled), with the sub-folders where
  stems repeat and the extension where one name comes in several formats (`clip.mp3`,
  `clip.ogg`: `after.data.manifest.unique_ids`). The label is
  not part of the id, so moving a clip to another label folder keeps its id. Ids must come out
  unique; the manifest names any two clips that clash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from after.data.corpora._common import (
    AUDIO_EXTENSIONS,
    Skipped,
    list_audio,
    list_dirs,
    make_id,
)
from after.data.manifest import (
    Manifest,
    Utterance,
    check_label_set,
    compile_speaker_regex,
    speaker_of_path,
    unique_ids,
)
from after.errors import LayoutError

_LAYOUT = (
    "<corpus_dir>/<label>/<speaker>/<clip>.wav, or <corpus_dir>/<label>/<clip>.wav; or, "
    "unlabeled, audio files anywhere under <corpus_dir> with --labels"
)


def prepare_csv(
    csv_path: str | os.PathLike[str],
    corpus: str | None = None,
    labels: Sequence[str] | None = None,
    speaker_regex: str | None = None,
) -> Manifest:
    """A manifest from a CSV of clips (paths relative to the CSV's folder). `corpus` defaults to
    the CSV's corpus column, else the CSV folder's name; `labels` declares the label set (needed
    without a label column); `speaker_regex` finds speakers in the paths where the CSV has no
    speaker column."""
    pattern = compile_speaker_regex(speaker_regex) if speaker_regex is not None else None
    if labels is not None:
        labels = check_label_set(labels, "--labels")
    return Manifest.from_csv(csv_path, corpus=corpus, labels=labels, speaker_regex=pattern)


def prepare_folder(
    corpus_dir: str | os.PathLike[str],
    speaker_regex: str | None = None,
    labels: Sequence[str] | None = None,
) -> Manifest:
    """A manifest from a folder of audio (see the module docstring for the layouts).

    `speaker_regex` finds each file's speaker in its path; it is needed when labeled clips lie
    directly in their label folders. `labels` declares the label set, and makes audio outside
    the label folders unlabeled clips of the manifest.
    """
    root = Path(os.path.abspath(Path(corpus_dir).expanduser()))
    name = root.name
    if not root.is_dir():
        state = "is a file" if root.exists() else "not found"
        raise LayoutError(f"{root}: {state}; give the folder that holds your audio files")
    pattern = compile_speaker_regex(speaker_regex) if speaker_regex is not None else None
    label_set = None if labels is None else check_label_set(labels, "--labels")
    label_dirs = [d for d in list_dirs(root) if label_set is None or d.name in label_set]
    labeled_roots = {d.resolve() for d in label_dirs}
    unlabeled = [] if label_set is None else _audio_under(root, labeled_roots)
    if label_set is None and not label_dirs:
        found = _audio_under(root, set())
        if not found:
            raise _no_audio(root)
        raise LayoutError(
            f"{root}: no label folders found, and {len(found)} audio file(s) (e.g. "
            f"{found[0].relative_to(root)}). If nobody has labeled them yet, give the label set: "
            "--labels anger,happiness,neutral,sadness (your labels; people label the clips "
            "with after run --oracle human). If they are labeled, sort them into one folder per "
            f"label: {_LAYOUT}"
        )
    skipped = Skipped()
    items = []
    tried: list[str] = []  # paths the regex was searched in

    def speaker_in(rel: str) -> str | None:
        assert pattern is not None
        tried.append(rel)
        found = speaker_of_path(pattern, rel)
        if found is None:
            skipped.skip("--speaker-regex finds no speaker in the path", rel)
        return found

    for label_dir in label_dirs:
        flat = list_audio(label_dir)
        if flat:
            if pattern is None:
                raise LayoutError(
                    f"{flat[0]}: clips lie directly in the label folder {label_dir}, so their "
                    "speaker is unknown. Either move them into one sub-folder per speaker "
                    f"({label_dir}/<speaker>/{flat[0].name}), or pass --speaker-regex, a regular "
                    "expression whose group finds it in the file name, e.g. '^([^_]+)_'"
                )
            for path in flat:
                if (speaker := speaker_in(path.relative_to(root).as_posix())) is not None:
                    items.append(_utterance(name, path, label_dir.name, speaker, ()))
        for speaker_dir in list_dirs(label_dir):
            speaker = speaker_dir.name
            for path in list_audio(speaker_dir):
                items.append(_utterance(name, path, label_dir.name, speaker, (speaker,)))
    relative = [p.relative_to(root).as_posix() for p in unlabeled]
    for path, rel, made in zip(unlabeled, relative, unique_ids(name, relative), strict=True):
        if pattern is None:
            speaker = made  # unknown: each clip is its own speaker
        elif (match := speaker_in(rel)) is not None:
            speaker = make_id(name, match)
        else:
            continue
        items.append(Utterance(made, str(path), None, speaker, name))
    if tried and len(tried) == skipped.count():
        assert pattern is not None
        raise LayoutError(
            f"{root}: --speaker-regex '{pattern.pattern}' finds a speaker in none of the "
            f"{len(tried)} file(s) (e.g. {tried[0]}); it is searched in the file name, then in "
            "the path under the folder: fix it, or leave it out (each unlabeled file is then "
            "its own speaker)"
        )
    if not items:
        raise _no_audio(root)
    skipped.report(name)
    return Manifest(items, source=f"{name} corpus at {root}", labels=label_set)


def _audio_under(root: Path, skip: set[Path]) -> list[Path]:
    """The audio files under `root` at any depth (hidden files and folders left out), outside
    the folders `skip`, sorted by path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() not in skip
        )
        found += [
            Path(folder) / f
            for f in files
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS
        ]
    return sorted(found)


def _no_audio(root: Path) -> LayoutError:
    return LayoutError(
        f"{root}: holds no audio file ({', '.join(AUDIO_EXTENSIONS)}); give the folder that "
        "holds your recordings"
    )


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
