"""The built-in demo corpus: synthetic emotional speech made with espeak-ng, no download needed.

This is a demo corpus of *synthetic* speech. Its "emotions" are textbook prosody rules applied to a
formant synthesizer; it is not real emotional speech and no result on it says anything about emotion
recognition on people. It exists so that every part of `after` (manifests, folds, TAPT, active
learning, reports) can be run end to end in seconds, offline, with labels that are learnable but not
trivial.

Design, as in acted corpora such as EmoDB: every speaker says every sentence in every emotion (a
balanced design), and the sentences are semantically neutral, so the words carry no emotion and only
the voice does.

- Speakers are espeak-ng voice variants (`SPEAKERS`: English voices with the variants in
  `voices/!v`), each with its own seeded baseline rate, pitch, pitch range and level.
- Emotions are the vocal effects summarized by Murray & Arnott (1993), "Toward the simulation of
  emotion in synthetic speech: A review of the literature on human vocal emotion", JASA 93(2),
  1097-1108, Table I. See `PROSODY` for the table and how its verbal grades become espeak
  parameters.
- Each clip varies at random around its emotion's target (`JITTER`), enough for neighbouring
  emotions to overlap, so the demo is not trivially separable.
- Optional white noise at a chosen SNR.

Output: `out_dir/audio/<id>.flac` (16 kHz mono, 16-bit) and `out_dir/manifest.jsonl`. The same
arguments give bit-identical files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np

from after.data.manifest import Manifest, Utterance
from after.errors import AfterError
from after.rng import derived_rng

CORPUS = "synth"
SAMPLE_RATE = 16_000

# ---- the prosody rules ---------------------------------------------------------------------------

# Murray & Arnott (1993), Table I, as signed grades: the paper describes each effect in words, which
# we transcribe as 1 = "slightly", 2 = plain ("faster", "higher"), 3 = "much", 4 = "very much"; the
# sign is the direction. Columns: speech rate, pitch average, pitch range, intensity. Neutral is the
# speaker's baseline.
PROSODY: dict[str, tuple[int, int, int, int]] = {
    #            rate  pitch  range  intensity
    "neutral":   (0,    0,     0,     0),
    "anger":     (+1,  +4,    +3,    +2),  # slightly faster, very much higher, much wider, higher
    # happiness: "faster or slower" in the paper; we take slightly faster (unlike neutral)
    "happiness": (+1,  +3,    +3,    +2),  # much higher, much wider, higher
    "sadness":   (-1,  -1,    -1,    -2),  # slightly slower/lower/narrower, lower
    "fear":      (+3,  +4,    +3,     0),  # much faster, very much higher, much wider, normal
    "disgust":   (-4,  -4,    +1,    -2),  # very much slower/lower, slightly wider, lower
}  # fmt: skip

# The size of one grade. The paper gives no numbers, so these are ours: large enough to be heard,
# small enough that "very much" stays inside espeak's parameter ranges for every speaker.
RATE_STEP = 1.08  # speech rate (espeakRATE, words/min) is multiplied by this per grade
PITCH_STEP_ST = (
    1.5  # pitch average moves this many semitones per grade ("very much higher" = +6 st)
)
RANGE_STEP = 1.15  # pitch range (espeakRANGE) is multiplied by this per grade
INTENSITY_STEP_DB = 2.0  # level changes this many dB per grade ("higher" = +4 dB)

# Per-clip random variation, standard deviations (normal in these units). One grade of rate, pitch
# or range is 1.5-2 standard deviations, so neighbouring emotions (anger/happiness, neutral/sadness)
# overlap.
JITTER = {"rate": math.log(1.05), "pitch_st": 1.0, "range": math.log(1.12), "intensity_db": 2.0}

# Per-speaker baselines, drawn uniformly once per speaker and seed.
BASE_RATE_WPM = (150.0, 180.0)
BASE_PITCH_ST = (-2.0, 2.0)  # around the voice variant's own pitch
BASE_RANGE = (0.85, 1.15)
BASE_LEVEL_DB = (-2.0, 2.0)

# espeak renders at this volume (of 0-200); above ~100 its integer output saturates and its limiter
# kicks in, which would flatten the loud emotions. Intensity is therefore applied as a gain on the
# float signal, and OUTPUT_GAIN_DB leaves headroom so that the loudest clips do not clip.
ESPEAK_VOLUME = 60
OUTPUT_GAIN_DB = -6.0

# Silence before and after each sentence, as in recorded corpora (espeak itself leaves almost none).
MARGIN_S = 0.15

# ---- speakers and sentences ----------------------------------------------------------------------

# (espeak voice, variant): the first 8 alternate male/female and US/British English.
SPEAKERS: tuple[tuple[str, str], ...] = (
    ("en-us", "m1"),
    ("en-us", "f1"),
    ("en", "m2"),
    ("en", "f2"),
    ("en-us", "m3"),
    ("en-us", "f3"),
    ("en", "m4"),
    ("en", "f4"),
    ("en-us", "m5"),
    ("en", "f5"),
    ("en-us", "m6"),
    ("en", "m7"),
    ("en-us", "m8"),
)

# Semantically neutral sentences of different lengths (everyday facts, no emotional words). A clip
# id ends in the sentence's index here, so do not reorder; append new ones at the end.
SENTENCES: tuple[str, ...] = (
    "The book is on the table.",
    "She put the keys in the drawer.",
    "The train leaves at seven in the morning.",
    "There is a chair next to the door.",
    "He wrote the number on a piece of paper.",
    "The meeting is on the second floor.",
    "Tomorrow the shop opens at nine.",
    "The blue folder is in the cupboard.",
    "We walked to the station after lunch.",
    "The window faces the street.",
    "They moved the boxes into the garage.",
    "The letter arrived on Tuesday.",
    "It is made of wood and metal.",
    "The bus stops in front of the library.",
    "She will call back in an hour.",
    "The lamp is standing in the corner.",
    "He parked the car behind the building.",
    "The report has twelve pages.",
    "Our office is near the river.",
    "The cup is on the kitchen counter.",
    "I will bring the papers on Friday.",
    "The road turns left after the bridge.",
    "The clock on the wall shows ten.",
    "They painted the fence last summer.",
    "The plates are on the top shelf.",
    "He carried the bag up the stairs.",
    "The form needs two signatures.",
    "The garden is behind the house.",
    "She opened the window in the morning.",
    "The coat is hanging by the door.",
    "We need three more chairs for the table.",
    "The parcel was left at the front desk.",
    "This street leads to the market.",
    "The computer is on the desk upstairs.",
    "He reads the newspaper every morning.",
    "The tickets are in the blue envelope.",
    "The water is in the kettle.",
    "They will paint the walls white.",
    "The shoes are under the bed.",
    "She keeps the notes in a folder.",
    "The film starts at half past eight.",
    "The map is on the back seat.",
    "He cut the paper into four pieces.",
    "The flowers are on the windowsill.",
    "The door on the left is the kitchen.",
    "We took the stairs to the third floor.",
    "The pen is next to the telephone.",
    "The light in the hall is switched on.",
)

DEFAULT_EMOTIONS = ("anger", "happiness", "neutral", "sadness")


def synthesize(
    out_dir: str | os.PathLike[str],
    *,
    num_speakers: int = 8,
    num_sentences: int = 12,
    emotions: Sequence[str] = DEFAULT_EMOTIONS,
    snr_db: float | None = None,
    seed: int = 0,
    num_workers: int | None = None,
) -> Manifest:
    """Write the demo corpus to `out_dir` and return its manifest.

    Makes num_speakers * len(emotions) * num_sentences clips: the first `num_speakers` of `SPEAKERS`
    each say the first `num_sentences` of `SENTENCES` in every emotion (names from `PROSODY`).
    Speaker ids are `synth_<variant>`, clip ids `synth_<variant>_<emotion>_<sentence index, 3
    digits>`. With `snr_db`, white noise is added to each clip at that SNR against the clip's mean
    power. `seed` fixes every random choice; the same arguments give bit-identical files.
    `num_workers` processes (default: one per CPU) share the speakers; the result does not depend on
    it.
    """
    emotions = tuple(emotions)
    _check_args(num_speakers, num_sentences, emotions, snr_db, num_workers)
    root = Path(out_dir).resolve()
    audio_dir = root / "audio"
    try:
        audio_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AfterError(f"{audio_dir}: cannot create the folder ({e.strerror})") from e

    jobs = [
        _speaker_job(voice, variant, emotions, num_sentences, snr_db, seed, audio_dir)
        for voice, variant in SPEAKERS[:num_speakers]
    ]
    # espeak-ng keeps state from one utterance to the next that no API call resets (the phase of its
    # pitch flutter, its roughness cycle count), so a clip depends on what the process synthesized
    # before it. Each speaker is therefore rendered by a fresh Python process, which makes the
    # output a function of the arguments alone. Threads here only wait for those processes.
    workers = min(num_workers or os.cpu_count() or 1, len(jobs))
    with ThreadPoolExecutor(workers) as pool:
        num_samples = list(pool.map(_run_worker, jobs))

    utterances = [
        Utterance(
            id=clip.id,
            path=str(audio_dir / f"{clip.id}.flac"),
            label=clip.emotion,
            speaker=job.speaker,
            corpus=CORPUS,
            duration_s=n / SAMPLE_RATE,
        )
        for job, counts in zip(jobs, num_samples, strict=True)
        for clip, n in zip(job.clips, counts, strict=True)
    ]
    manifest = Manifest(utterances, source=CORPUS)
    manifest.to_jsonl(root / "manifest.jsonl")
    return manifest


def _check_args(
    num_speakers: int,
    num_sentences: int,
    emotions: tuple[str, ...],
    snr_db: float | None,
    num_workers: int | None,
) -> None:
    if not 1 <= num_speakers <= len(SPEAKERS):
        raise AfterError(
            f"num_speakers={num_speakers}, but the demo corpus has {len(SPEAKERS)} voices; "
            f"choose 1 to {len(SPEAKERS)}"
        )
    if not 1 <= num_sentences <= len(SENTENCES):
        raise AfterError(
            f"num_sentences={num_sentences}, but the demo corpus has {len(SENTENCES)} sentences; "
            f"choose 1 to {len(SENTENCES)}"
        )
    if not emotions:
        raise AfterError(f"no emotions given; choose from {', '.join(PROSODY)}")
    unknown = [e for e in emotions if e not in PROSODY]
    if unknown:
        raise AfterError(
            f"unknown emotion(s) {unknown}; the demo corpus knows {', '.join(PROSODY)}"
        )
    if len(set(emotions)) != len(emotions):
        raise AfterError(f"emotions {list(emotions)} repeat a name; give each once")
    if snr_db is not None and not math.isfinite(snr_db):
        raise AfterError(f"snr_db={snr_db} must be a finite number of dB, or None for no noise")
    if num_workers is not None and num_workers < 1:
        raise AfterError(f"num_workers={num_workers} must be at least 1")


# ---- from rules to per-clip parameters (in the parent process, all seeded) -----------------------


@dataclasses.dataclass(frozen=True)
class _Clip:
    """Everything needed to render one clip. Rate in words/min; pitch and range are espeak's 0-100
    scales."""

    id: str
    emotion: str
    text: str
    rate: int
    pitch: int
    pitch_range: int
    gain_db: float
    noise_seed: int
    snr_db: float | None


@dataclasses.dataclass(frozen=True)
class _SpeakerJob:
    speaker: str
    voice: str  # espeak voice name, e.g. "en-us+m1"
    clips: tuple[_Clip, ...]
    audio_dir: str


def _speaker_job(
    voice: str,
    variant: str,
    emotions: tuple[str, ...],
    num_sentences: int,
    snr_db: float | None,
    seed: int,
    audio_dir: Path,
) -> _SpeakerJob:
    speaker = f"{CORPUS}_{variant}"
    rng = derived_rng(seed, speaker)
    base_rate = rng.uniform(*BASE_RATE_WPM)
    base_pitch_st = rng.uniform(*BASE_PITCH_ST)
    base_range = rng.uniform(*BASE_RANGE)
    base_level_db = rng.uniform(*BASE_LEVEL_DB)

    clips = []
    for sentence in range(num_sentences):
        for emotion in emotions:
            clip_id = f"{speaker}_{emotion}_{sentence:03d}"
            clip_rng = derived_rng(seed, clip_id)
            d_rate, d_pitch, d_range, d_intensity = PROSODY[emotion]
            rate = base_rate * RATE_STEP**d_rate * math.exp(clip_rng.normal(0, JITTER["rate"]))
            pitch_st = (
                base_pitch_st + PITCH_STEP_ST * d_pitch + clip_rng.normal(0, JITTER["pitch_st"])
            )
            pitch_range = (
                base_range * RANGE_STEP**d_range * math.exp(clip_rng.normal(0, JITTER["range"]))
            )
            level_db = (
                base_level_db
                + INTENSITY_STEP_DB * d_intensity
                + clip_rng.normal(0, JITTER["intensity_db"])
            )
            clips.append(
                _Clip(
                    id=clip_id,
                    emotion=emotion,
                    text=SENTENCES[sentence],
                    # espeak's pitch scale is logarithmic: 50 is the voice's own pitch and each 50
                    # steps is an octave (its pitch_adjust_tab), so one semitone is 50/12 steps.
                    rate=round(np.clip(rate, 80, 450)),
                    pitch=round(np.clip(50 + pitch_st * 50 / 12, 0, 100)),
                    pitch_range=round(np.clip(50 * pitch_range, 0, 100)),
                    gain_db=OUTPUT_GAIN_DB + level_db,
                    noise_seed=int(clip_rng.integers(2**32)),
                    snr_db=snr_db,
                )
            )
    return _SpeakerJob(speaker, f"{voice}+{variant}", tuple(clips), str(audio_dir))


# ---- rendering (in a worker process) -------------------------------------------------------------

# The folder that holds the `after` package, so that the worker imports this same copy of it.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def _run_worker(job: _SpeakerJob) -> list[int]:
    """Render one speaker's clips in a fresh `python -m after.data.synth` process; returns sample
    counts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_PARENT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "after.data.synth"],
        input=json.dumps(dataclasses.asdict(job)),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise AfterError(f"synthesizing speaker {job.speaker} failed: {detail[0]}")
    counts: list[int] = json.loads(done.stdout)
    return counts


def _worker_main() -> None:
    """Entry point of a worker process: a `_SpeakerJob` as JSON on stdin, sample counts as JSON on
    stdout."""
    job = json.loads(sys.stdin.read())
    job["clips"] = tuple(_Clip(**clip) for clip in job["clips"])
    try:
        counts = _render_speaker(_SpeakerJob(**job))
    except AfterError as e:
        sys.exit(f"AfterError: {e}")
    print(json.dumps(counts))


def _render_speaker(job: _SpeakerJob) -> list[int]:
    """Synthesize, resample, scale, add noise and write each clip of one speaker; returns sample
    counts."""
    import soundfile as sf
    import soxr

    engine = Espeak.get()
    counts = []
    for clip in job.clips:
        speech = engine.speak(
            clip.text,
            job.voice,
            rate=clip.rate,
            pitch=clip.pitch,
            pitch_range=clip.pitch_range,
            seed=clip.noise_seed,
        )
        speech = soxr.resample(speech, engine.sample_rate, SAMPLE_RATE) * 10 ** (clip.gain_db / 20)
        x = np.pad(speech, round(MARGIN_S * SAMPLE_RATE))
        if clip.snr_db is not None:
            # The SNR is against the power of the sentence itself, not diluted by the silent
            # margins.
            noise_power = np.mean(speech**2) / 10 ** (clip.snr_db / 10)
            x = x + np.random.default_rng(clip.noise_seed).normal(0, math.sqrt(noise_power), x.size)
        pcm = np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)
        sf.write(
            Path(job.audio_dir, f"{clip.id}.flac"),
            pcm,
            SAMPLE_RATE,
            format="FLAC",
            subtype="PCM_16",
        )
        counts.append(pcm.size)
    return counts


_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Espeak:
    """The espeak-ng library through ctypes, initialised once per process (espeak-ng is a global
    singleton).

    Prefers the library and voice data shipped by the `espeakng-loader` wheel; falls back to a
    system libespeak-ng (with its own data). Not thread-safe, like espeak-ng itself.
    """

    _instance: ClassVar[Espeak | None] = None

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        lib, data_path = _load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            where = data_path.decode() if data_path else "its default data folder"
            raise AfterError(
                f"espeak-ng could not initialise with voice data from {where}; "
                "reinstall it: pip install --force-reinstall espeakng-loader"
            )
        self.sample_rate: int = rate
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        # Keep the ctypes callback referenced for the life of the process: espeak calls it from C.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], num_samples: int, events: int) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def speak(
        self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int, seed: int
    ) -> np.ndarray:
        """Speak `text`; returns float32 samples in [-1, 1] at `sample_rate`, shape (num_samples,).

        `voice` is an espeak name such as "en-us+m1"; `rate` in words/min (80-450), `pitch` and
        `pitch_range` on espeak's 0-100 scales (50 = the voice's own). `seed` seeds espeak's own
        random numbers (the breath noise of voices such as f2 and f3), which otherwise differ from
        run to run.
        """
        self._lib.espeak_ng_SetRandSeed(seed)
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise AfterError(f"espeak-ng has no voice {voice!r}; is its voice data complete?")
        for parameter, value in (
            (_RATE, rate),
            (_VOLUME, ESPEAK_VOLUME),
            (_PITCH, pitch),
            (_RANGE, pitch_range),
        ):
            self._lib.espeak_SetParameter(parameter, value, 0)
        self._chunks = []
        data = text.encode()
        status = self._lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise AfterError(f"espeak-ng failed to synthesize {text!r} (error {status})")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            raise AfterError(f"espeak-ng produced no audio for {text!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768


def _load_library() -> tuple[ctypes.CDLL, bytes | None]:
    """The espeak-ng library and its data folder (None: the library's compiled-in default)."""
    fix = (
        "install it with `pip install espeakng-loader` "
        "(or on Debian/Ubuntu: apt-get install espeak-ng)"
    )
    try:
        import espeakng_loader
    except ImportError:
        name = ctypes.util.find_library("espeak-ng")
        if name is None:
            raise AfterError(
                f"espeak-ng, needed for the demo corpus, is not installed; {fix}"
            ) from None
        try:
            return ctypes.CDLL(name), None
        except OSError as e:
            raise AfterError(f"cannot load the system espeak-ng ({e}); {fix}") from e
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
    except (OSError, RuntimeError) as e:
        raise AfterError(
            f"cannot load espeak-ng from espeakng-loader ({e}); reinstall it: {fix}"
        ) from e
    return lib, data.encode()


if __name__ == "__main__":
    _worker_main()
