"""Corpus adapters: one module per corpus, each with `prepare_<corpus>(corpus_dir, ...)`.

Adapters read file names and label files only (never audio), so they are fast; every module's
docstring gives the expected layout, the label map and how speakers, sessions, splits and ids are
derived (summarised in docs/corpora.md). A missing or empty corpus folder raises
`ManualDownloadRequired`; a folder laid out differently raises `LayoutError` naming the missing
path.

`CORPORA` maps the names the CLI accepts to the prepare functions; `prepare` looks one up.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from after.data.corpora._common import AUDIO_EXTENSIONS
from after.data.corpora.crema_d import prepare_crema_d
from after.data.corpora.emodb import prepare_emodb
from after.data.corpora.generic import prepare_csv, prepare_folder
from after.data.corpora.iemocap import prepare_iemocap
from after.data.corpora.meld import prepare_meld
from after.data.corpora.msp_podcast import prepare_msp_podcast
from after.data.corpora.ravdess import prepare_ravdess
from after.data.corpora.savee import prepare_savee
from after.data.corpora.tess import prepare_tess
from after.data.manifest import Manifest
from after.errors import AfterError

__all__ = [
    "AUDIO_EXTENSIONS",
    "CORPORA",
    "prepare",
    "prepare_crema_d",
    "prepare_csv",
    "prepare_emodb",
    "prepare_folder",
    "prepare_iemocap",
    "prepare_meld",
    "prepare_msp_podcast",
    "prepare_ravdess",
    "prepare_savee",
    "prepare_tess",
]

CORPORA: dict[str, Callable[..., Manifest]] = {
    "iemocap": prepare_iemocap,
    "msp-podcast": prepare_msp_podcast,
    "crema-d": prepare_crema_d,
    "ravdess": prepare_ravdess,
    "emodb": prepare_emodb,
    "savee": prepare_savee,
    "tess": prepare_tess,
    "meld": prepare_meld,
    "csv": prepare_csv,
    "folder": prepare_folder,
}


def prepare(name: str, data_dir: str | os.PathLike[str], **options: Any) -> Manifest:
    """Prepare corpus `name` (a key of `CORPORA`) from `data_dir` (for "csv": the CSV file).

    `options` are the adapter's keyword options, e.g. `test_set="Test2"` for "msp-podcast" or
    `speaker_regex=...` for "folder"; an option the adapter does not take is an `AfterError`.
    """
    try:
        prepare_fn = CORPORA[name]
    except KeyError:
        raise AfterError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}") from None
    try:
        inspect.signature(prepare_fn).bind(data_dir, **options)
    except TypeError:
        accepted = list(inspect.signature(prepare_fn).parameters)[1:]
        raise AfterError(
            f"corpus {name!r} does not take option(s) {sorted(options)}; "
            f"it takes {accepted or 'none'}"
        ) from None
    return prepare_fn(data_dir, **options)
