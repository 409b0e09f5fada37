"""Frozen offline feature backbones: pretrained speech representations that run on a CPU with no
download, used in place of a wav2vec 2.0 model by the classifier and the active-learning loop.

They are frozen: nothing here is trained or fine-tuned; an utterance always maps to the same vector
(given the same package versions, which `FeatureBackbone.version` records).

- `egemaps`: openSMILE's eGeMAPSv02 functionals (the extended Geneva Minimalistic Acoustic
  Parameter Set, Eyben et al. 2016), 88 values per clip: pitch, jitter, shimmer, loudness,
  formants, spectral slopes, MFCCs, voiced/unvoiced segment statistics. Needs at least 60 ms of
  audio. Licence: the `opensmile` package's LICENSE (`opensmile-*.dist-info/licenses/LICENSE`) is
  the *audEERING Research License Agreement*, not an open-source licence (its PyPI classifier says
  MIT, but the licence text is what binds): free for non-commercial use (teaching, academic
  research, personal use) and for commercial research aimed at publication or pre-product
  evaluation; any other commercial use, including using features extracted with it in a product,
  needs a commercial licence from audEERING GmbH. Cite openSMILE when you publish with it.
- `resemblyzer`: the speaker encoder bundled with Resemblyzer (a 3-layer LSTM over 40-band mel
  frames, trained for speaker verification; GE2E), 256 values per clip, L2-normalised, averaged
  over 1.6 s windows. Licence: Apache-2.0 (`Resemblyzer-*.dist-info/LICENSE`; the weights
  `pretrained.pt` ship inside that package). Preprocessing: we apply Resemblyzer's own
  `preprocess_wav` (raise quiet clips to -30 dBFS, cut long non-speech stretches with webrtcvad),
  because that is the input the encoder was trained on. The VAD can cut a short or non-speech clip
  to nothing, so when trimming leaves less than 0.25 s we embed the volume-normalised untrimmed clip
  instead. It describes the voice more than the emotion; it is a baseline.

- `frozen:SPEC` or `frozen:SPEC@LAYER`: a layer of any speech encoder that `after.models.backbones`
  loads (`frozen:whisper-tiny.en`, `frozen:whisper-base`, a TAPT output folder, a hub id), averaged
  over the clip's own frames. The default layer is the middle one (`num_layers // 2`): on EmoDB,
  leave-one-speaker-out, Whisper's middle layers beat its last by 7 (tiny.en) to 8 (base) UA
  points, as probing studies of speech models find for emotion (BENCHMARKS.md). Licence: the
  encoder's (Whisper: MIT).

`embed_manifest` computes one row per utterance and caches each row on disk (see `after.cache`).
"""

from __future__ import annotations

import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from after.cache import ArrayCache
from after.cache import cache_folder as _cache_folder
from after.data.audio import SAMPLE_RATE, load_audio
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError

# Bump when this module's preprocessing changes in a way that changes features: every backbone's
# version includes it, so old cache entries are left behind rather than reused.
_CODE_REVISION = "1"


def _versions(*packages: str) -> str:
    """`pkg=1.2.3;...` for the installed packages (`?` where one is not installed)."""
    parts = []
    for p in packages:
        try:
            parts.append(f"{p}={_pkg_version(p)}")
        except PackageNotFoundError:
            parts.append(f"{p}=?")
    return ";".join(parts)


class FeatureBackbone(ABC):
    """A frozen extractor: 16 kHz mono float32 clip in, one float32 vector of size `dim` out.

    `version` changes whenever the features would change (package versions, weights and
    settings); caches are keyed on it. Subclasses implement `_embed`; `embed` checks the input and
    output.
    """

    name: str
    dim: int
    version: str

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """Features of one clip, shape (dim,), float32. Raises AfterError for an unusable input or
        a non-finite result."""
        x = np.ascontiguousarray(wave, dtype=np.float32)
        if x.ndim != 1:
            raise AfterError(
                f"{self.name}: expected a mono 1-D wave, got shape {x.shape}; use load_audio"
            )
        if x.size == 0:
            raise AfterError(f"{self.name}: the wave is empty; nothing to embed")
        if not np.isfinite(x).all():
            raise AfterError(f"{self.name}: the wave holds NaN or infinite samples")
        y = np.ascontiguousarray(self._embed(x), dtype=np.float32).reshape(-1)
        if y.shape != (self.dim,):
            raise AfterError(f"{self.name}: produced shape {y.shape}, expected ({self.dim},)")
        if not np.isfinite(y).all():
            bad = int(np.count_nonzero(~np.isfinite(y)))
            raise AfterError(
                f"{self.name}: {bad} of {self.dim} features are NaN or infinite for this clip "
                f"({x.size / SAMPLE_RATE:.3f} s); the clip is probably too short or silent"
            )
        return y

    @abstractmethod
    def _embed(self, wave: np.ndarray) -> np.ndarray:
        """The raw features of a checked, non-empty, finite 1-D float32 wave."""


class EgemapsBackbone(FeatureBackbone):
    """openSMILE eGeMAPSv02 functionals, 88-d."""

    name = "egemaps"
    dim = 88
    # eGeMAPS' longest analysis window (pitch) is 60 ms; shorter clips give all-NaN functionals.
    MIN_SAMPLES: ClassVar[int] = 960

    def __init__(self) -> None:
        self.version = (
            f"{self.name};rev={_CODE_REVISION};{_versions('opensmile')};"
            f"set=eGeMAPSv02;level=Functionals;sr={SAMPLE_RATE}"
        )
        self._smile: Any = None
        self._lock = threading.Lock()

    def _extractor(self) -> Any:
        with self._lock:
            if self._smile is None:
                import opensmile

                self._smile = opensmile.Smile(
                    feature_set=opensmile.FeatureSet.eGeMAPSv02,
                    feature_level=opensmile.FeatureLevel.Functionals,
                )
            return self._smile

    @property
    def feature_names(self) -> list[str]:
        """The 88 feature names, in output order (e.g. `F0semitoneFrom27.5Hz_sma3nz_amean`)."""
        return list(self._extractor().feature_names)

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        if wave.size < self.MIN_SAMPLES:
            raise AfterError(
                f"{self.name}: the clip is {wave.size / SAMPLE_RATE * 1000:.0f} ms; eGeMAPS needs "
                f"at least {self.MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms"
            )
        frame = self._extractor().process_signal(wave, SAMPLE_RATE)
        return np.asarray(frame.to_numpy(), dtype=np.float32)[0]


class ResemblyzerBackbone(FeatureBackbone):
    """Resemblyzer's pretrained speaker encoder, 256-d, with its own preprocessing (see module)."""

    name = "resemblyzer"
    dim = 256
    # When VAD trimming leaves less than this, the untrimmed (volume-normalised) clip is embedded.
    MIN_TRIMMED_S: ClassVar[float] = 0.25

    def __init__(self) -> None:
        self.version = (
            f"{self.name};rev={_CODE_REVISION};"
            f"{_versions('resemblyzer', 'webrtcvad', 'librosa', 'torch')};"
            f"preprocess=normalize+vad,fallback<{self.MIN_TRIMMED_S}s;sr={SAMPLE_RATE}"
        )
        self._encoder: Any = None
        self._module: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._encoder is None:
                # resemblyzer's imports warn about deprecated pkg_resources / scipy paths.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import resemblyzer

                self._module = resemblyzer
                self._encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)
            return self._module, self._encoder

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        if not np.any(wave):
            raise AfterError(f"{self.name}: the clip is digital silence; nothing to embed")
        resemblyzer, encoder = self._load()
        x = resemblyzer.preprocess_wav(wave)
        if x.size < self.MIN_TRIMMED_S * SAMPLE_RATE:
            x = resemblyzer.normalize_volume(
                wave, resemblyzer.hparams.audio_norm_target_dBFS, increase_only=True
            )
        return np.asarray(encoder.embed_utterance(np.asarray(x, dtype=np.float32)))


class EncoderFeatures(FeatureBackbone):
    """`frozen:SPEC[@LAYER]`: the mean over the clip's frames of one layer of a speech encoder
    (see the module docstring). Layer 0 is the input to the first transformer layer; the last one
    is the encoder's output."""

    def __init__(self, spec: str) -> None:
        from after.models.backbones import family_of, load_config

        encoder, _, layer = spec.removeprefix(FROZEN_PREFIX).partition("@")
        if not encoder:
            raise AfterError(f"{spec!r}: give an encoder, e.g. {FROZEN_PREFIX}whisper-tiny.en")
        config = load_config(encoder)
        num_layers = int(config.num_hidden_layers)
        if layer and not (layer.isdigit() and int(layer) <= num_layers):
            raise AfterError(f"{spec!r}: the layer must be a number from 0 to {num_layers}")
        self.encoder = encoder
        self.layer = int(layer) if layer else num_layers // 2
        self.name = spec
        self.dim = int(config.hidden_size)
        self._family = family_of(config)
        self._model: Any = None
        self._preprocessor: Any = None
        self._lock = threading.Lock()
        model, preprocessor = self._load()
        # The weights the features come from: a digest of every tensor up to the layer.
        digest = self._family.frozen_key(model, preprocessor, self.layer)
        self.version = (
            f"frozen;rev={_CODE_REVISION};weights={digest[:32]};layer={self.layer};"
            f"pool=mean;{_versions('transformers', 'torch')};sr={SAMPLE_RATE}"
        )

    def _load(self) -> tuple[Any, Any]:
        from after.models.backbones import load_audio_classifier, load_feature_extractor

        with self._lock:
            if self._model is None:
                model = load_audio_classifier(self.encoder, num_labels=2)
                self._model = model.eval()
                self._preprocessor = load_feature_extractor(self.encoder)
            return self._model, self._preprocessor

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        import torch

        model, preprocessor = self._load()
        inputs = self._family.inputs([wave], preprocessor)
        # One model, shared by embed_manifest's threads: torch uses every core for one clip.
        with self._lock, torch.no_grad():
            hidden, mask = self._family.hidden(model, inputs, self.layer)
        frames = hidden[0][mask[0].bool()]
        return frames.float().mean(dim=0).numpy()


FROZEN_PREFIX = "frozen:"
FEATURE_BACKBONES: dict[str, type[FeatureBackbone]] = {
    EgemapsBackbone.name: EgemapsBackbone,
    ResemblyzerBackbone.name: ResemblyzerBackbone,
}


def is_feature_backbone(spec: str) -> bool:
    """Whether `spec` names a frozen feature backbone (rather than a transformers backbone)."""
    return spec in FEATURE_BACKBONES or spec.startswith(FROZEN_PREFIX)


def load_feature_backbone(name: str) -> FeatureBackbone:
    """A new backbone object by name; its extractor is created on first use."""
    if name.startswith(FROZEN_PREFIX):
        return EncoderFeatures(name)
    try:
        cls = FEATURE_BACKBONES[name]
    except KeyError:
        raise AfterError(
            f"unknown feature backbone {name!r}; known: {', '.join(sorted(FEATURE_BACKBONES))}, "
            f"and {FROZEN_PREFIX}ENCODER[@LAYER] for a layer of a speech encoder"
        ) from None
    return cls()


def cache_folder(backbone: FeatureBackbone, cache_dir: str | os.PathLike[str]) -> Path:
    """The folder holding `backbone`'s cached features under `cache_dir` (see `after.cache`)."""
    return _cache_folder(cache_dir, backbone.name, backbone.version)


def embed_manifest(
    backbone: FeatureBackbone,
    manifest: Manifest,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 1,
    on_item: Callable[[], None] | None = None,
) -> np.ndarray:
    """Features of every utterance, shape (len(manifest), backbone.dim), float32, in manifest order.

    Each clip is loaded whole with `load_audio` (an unusable file raises its `AudioError`, which
    names the file). With `cache_dir`, rows are read from and written to the cache described above;
    a hit returns exactly the array computing it would. `num_workers` threads load and embed in
    parallel; `on_item` is called once per utterance (from a worker thread).
    """
    cache = None if cache_dir is None else ArrayCache(cache_folder(backbone, cache_dir))

    def one(u: Utterance) -> np.ndarray:
        row = _embed_one(backbone, u, cache)
        if on_item is not None:
            on_item()
        return row

    if len(manifest) == 0:
        return np.zeros((0, backbone.dim), dtype=np.float32)
    if num_workers <= 1:
        rows = [one(u) for u in manifest]
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            rows = list(pool.map(one, manifest))
    return np.stack(rows).astype(np.float32, copy=False)


def _embed_one(backbone: FeatureBackbone, u: Utterance, cache: ArrayCache | None) -> np.ndarray:
    if cache is not None:
        cached = cache.get(u)
        if cached is not None and cached.shape == (backbone.dim,) and cached.dtype == np.float32:
            return cached
    wave = load_audio(u.path)
    try:
        row = backbone.embed(wave)
    except AfterError as e:
        raise AfterError(f"{u.path} (utterance {u.id!r}): {e}") from e
    if cache is not None:
        cache.put(u, row)
    return row
