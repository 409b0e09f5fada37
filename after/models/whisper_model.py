"""Whisper's encoder as an emotion classifier that reads each clip's own frames only.

transformers' `WhisperForAudioClassification` takes the log-mel input padded to Whisper's 30 s
window and averages the classifier's input over all 1500 frames, padding included: a 2 s clip is 7%
of what it pools, and every clip costs a 30 s forward pass. This subclass keeps its weights, config
and head (a model saved from it is also a valid `WhisperForAudioClassification` folder) and changes
only the forward pass: the input is cut to the longest clip of the batch, the sinusoidal position
table is read from its start for that many frames, padded frames are masked out of self-attention
and out of the mean. On EmoDB this is 33x faster than the 30 s window and, read at the middle layer,
more accurate (see BENCHMARKS.md).

`config.num_hidden_layers` may be smaller than the pretrained model's: the top layers are then
dropped (the middle layers carry most of the emotion information, and half the layers cost half).

With `config.use_weighted_layer_sum` the head reads a learned softmax-weighted sum of the layers'
outputs (SUPERB style; `layer_weights` as in transformers: the input to the first layer, each
layer's output, the last after the final layer norm) instead of the last layer alone. The sum runs
over layers `config.layer_sum_from` (default 0) and up: a classifier whose bottom N layers are
frozen and cached from layer N's output (`frames_layer`) sums layers N and up, whichever way it
is run, so that cached training and the exported model agree.

SpecAugment-style time masking (training only) replaces the conv stem's output of the masked
frames by zeros before the positions are added, so masked frames keep their position. About
`mask_time_prob` of each clip's frames are masked, short clips included
(`config.mask_time_min_masks` 0). Frames cached above layer 0 are not masked: the masked input
would pass through frozen layers that the cache has already run.

It imports only numpy, torch and transformers: it is copied into every saved Whisper classifier, so
that `transformers.pipeline("audio-classification", model=DIR, trust_remote_code=True)` and
`AutoModelForAudioClassification.from_pretrained(DIR, trust_remote_code=True)` run it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import WhisperForAudioClassification
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices


class WhisperEncoderForAudioClassification(WhisperForAudioClassification):
    """`WhisperForAudioClassification` over each clip's own frames (see the module docstring).

    Inputs: `input_features` (B, n_mels, F) log-mel frames as `WhisperFeatureExtractor` makes
    them (any F, usually 3000) and `attention_mask` (B, F), 1 on the clip's frames; or, from a
    cache of the frozen bottom of the encoder, `frames` (B, T, D) = the output of layer
    `frames_layer` and `frame_mask` (B, T).

    Whisper itself has no dropout; `config.final_dropout` (default 0.1) drops units of the
    pooled vector before the classifier in training, and is what MC-dropout strategies (BALD,
    DBAL) sample.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.final_dropout = nn.Dropout(getattr(config, "final_dropout", 0.1))

    def embed(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv stem plus positions: ((B, T, D) frames, (B, T) 1 = a clip's frame)."""
        enc = self.encoder
        if attention_mask is None:
            mel_lengths = torch.full(
                (input_features.shape[0],), input_features.shape[-1], device=input_features.device
            )
        elif attention_mask.shape[-1] != input_features.shape[-1]:
            # A sample-level mask (what the feature extractor returns when called without
            # return_attention_mask, as transformers' pipeline does): one mel frame per hop.
            hop = attention_mask.shape[-1] // input_features.shape[-1]
            mel_lengths = -torch.div(-attention_mask.sum(dim=-1), hop, rounding_mode="floor")
        else:
            mel_lengths = attention_mask.sum(dim=-1)
        # The conv stem halves the frame rate; keep an even number of mel frames.
        num_mel = int(mel_lengths.max()) if len(mel_lengths) else 0
        num_mel = min(max(2, num_mel + num_mel % 2), input_features.shape[-1])
        x = input_features[..., :num_mel].to(enc.conv1.weight.dtype)
        if attention_mask is not None:
            # What lies past a clip becomes the zeros a clip cut alone would be padded with, so
            # that a clip's frames do not depend on the batch it is in.
            keep = mel_lengths + mel_lengths % 2
            inside = torch.arange(num_mel, device=x.device)[None, :] < keep[:, None]
            x = x * inside[:, None, :].to(x.dtype)
        h = nn.functional.gelu(enc.conv1(x))
        h = nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)
        num_frames = h.shape[1]
        h = h + self.positions(num_frames)
        lengths = torch.div(mel_lengths + 1, 2, rounding_mode="floor").clamp(1, num_frames)
        mask = torch.arange(num_frames, device=h.device)[None, :] < lengths[:, None]
        return h, mask.long()

    def positions(self, num_frames: int) -> torch.Tensor:
        """Whisper's sinusoidal position table for the first `num_frames` frames, (T, D)."""
        table = self.encoder.embed_positions
        if num_frames > table.num_embeddings:
            raise ValueError(
                f"{num_frames} frames is longer than Whisper's window "
                f"({table.num_embeddings}); cut the audio to 30 s"
            )
        weight: torch.Tensor = table.weight[:num_frames]
        return weight

    def states(
        self, frames: torch.Tensor, mask: torch.Tensor, start: int = 0, end: int | None = None
    ) -> list[torch.Tensor]:
        """`frames` (B, T, D), the output of layer `start` (0: `embed`'s), and the outputs of
        layers `start` + 1 to `end` (default: all, the last then layer-normed), with padded
        frames (mask 0) hidden from attention."""
        enc = self.encoder
        end = len(enc.layers) if end is None else end
        h = (
            nn.functional.dropout(frames, p=enc.dropout, training=self.training)
            if start == 0
            else frames
        )
        bias = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        out = [h]
        for layer in enc.layers[start:end]:
            if not (self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop):
                h = layer(h, bias)
            out.append(h)
        if end == len(enc.layers):
            out[-1] = enc.layer_norm(out[-1])
        return out

    def encode(
        self, frames: torch.Tensor, mask: torch.Tensor, start: int = 0, end: int | None = None
    ) -> torch.Tensor:
        """The last of `states`: layer `end`'s output (default: the last, layer-normed)."""
        return self.states(frames, mask, start, end)[-1]

    def mix(self, states: list[torch.Tensor], start: int) -> torch.Tensor:
        """What the head reads from `states` (layers `start` and up): the last layer, or with
        `config.use_weighted_layer_sum` the softmax-weighted sum of layers
        `config.layer_sum_from` and up (see the module docstring)."""
        if not self.config.use_weighted_layer_sum:
            return states[-1]
        first = getattr(self.config, "layer_sum_from", 0)
        if start > first:
            raise ValueError(
                f"this model sums layers {first} and up, but was given the frames of layer {start}"
            )
        weights = nn.functional.softmax(self.layer_weights[first:], dim=-1)
        stacked = torch.stack(states[first - start :])
        mixed: torch.Tensor = torch.einsum("l,lbtd->btd", weights.to(stacked.dtype), stacked)
        return mixed

    def _spec_augment(self, frames: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        """SpecAugment-style time masking in training, where the config asks: the masked frames
        of `embed`'s output become their positions alone (a zero conv-stem output). Frames of a
        layer above 0 are left as they are (see the module docstring)."""
        cfg = self.config
        if not (self.training and cfg.apply_spec_augment and cfg.mask_time_prob > 0 and layer == 0):
            return frames
        spans = _compute_mask_indices(
            (frames.shape[0], frames.shape[1]),
            mask_prob=cfg.mask_time_prob,
            mask_length=cfg.mask_time_length,
            attention_mask=mask,  # type: ignore[arg-type]
            min_masks=cfg.mask_time_min_masks,
        )
        hide = torch.tensor(spans, device=frames.device, dtype=torch.bool)
        return torch.where(hide[..., None], self.positions(frames.shape[1]).to(frames), frames)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The projector, then the mean over each clip's frames: (B, classifier_proj_size)."""
        projected = self.projector(hidden)
        weights = mask.to(projected.dtype)[..., None]
        return (projected * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        frames: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        frames_layer: int = 0,
        **kwargs: object,
    ) -> SequenceClassifierOutput:
        if frames is None:
            if input_features is None:
                raise ValueError("give input_features (log-mel) or cached frames")
            frames, frame_mask = self.embed(input_features, attention_mask)
        elif frame_mask is None:
            frame_mask = torch.ones(frames.shape[:2], dtype=torch.long, device=frames.device)
        assert frame_mask is not None
        frames = self._spec_augment(frames, frame_mask, frames_layer)
        states = self.states(frames, frame_mask, start=frames_layer)
        hidden = self.mix(states, frames_layer)
        logits = self.classifier(self.final_dropout(self.pool(hidden, frame_mask)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.num_labels), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def frame_lengths(num_samples: np.ndarray | int, hop_length: int = 160) -> np.ndarray:
    """Encoder frames of clips of `num_samples` samples (one per 20 ms, at least 1)."""
    mel = -(-np.asarray(num_samples) // hop_length)
    return np.maximum(1, (mel + 1) // 2)
