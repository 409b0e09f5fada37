"""Backbone loading: every family from a local folder, scratch configs, offline-first hub ids."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, Wav2Vec2ForPreTraining

from after.errors import AfterError
from after.models.backbones import (
    SCRATCH,
    feature_encoder,
    freeze_feature_encoder,
    load_backbone,
    load_config,
    load_feature_extractor,
    num_frames,
    scratch_config,
)
from after.testing.dummies import tiny_backbone

FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")


def test_scratch_base_is_the_wav2vec2_base_shape() -> None:
    c = scratch_config("base")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (768, 12, 12)
    assert (c.intermediate_size, tuple(c.conv_dim)) == (3072, (512,) * 7)
    assert c.feat_extract_norm == "group" and not c.do_stable_layer_norm
    assert set(SCRATCH) == {"tiny", "small", "base"}
    with pytest.raises(AfterError, match="scratch:tiny"):
        load_backbone("scratch:huge")


def test_scratch_tiny_runs_and_has_a_quantizer_for_pretraining() -> None:
    model = load_backbone("scratch:tiny", pretraining=True)
    assert isinstance(model, Wav2Vec2ForPreTraining)
    bare = load_backbone("scratch:tiny")
    out = bare(torch.randn(2, 16000)).last_hidden_state
    assert out.shape == (2, 49, 32)
    assert num_frames(bare.config, torch.tensor([16000, 400, 399])).tolist() == [49, 1, 0]
    assert load_feature_extractor("scratch:tiny").do_normalize


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_from_a_folder_and_freezes_its_cnn(family: str, tmp_path: Path) -> None:
    folder = tiny_backbone(tmp_path / family, family)
    assert load_config(str(folder)).model_type == family
    model = load_backbone(str(folder))
    freeze_feature_encoder(model)
    model.train()
    model(torch.randn(2, 8000)).last_hidden_state.pow(2).mean().backward()
    cnn = {id(p) for p in feature_encoder(model).parameters()}
    assert cnn
    for p in model.parameters():
        if id(p) in cnn:
            assert not p.requires_grad and p.grad is None
    assert any(p.grad is not None for p in model.parameters() if id(p) not in cnn)


def test_uncached_hub_id_fails_at_once_with_the_way_out() -> None:
    t0 = time.perf_counter()
    with pytest.raises(AfterError) as e:
        load_backbone("after-tests/no-such-model")
    assert time.perf_counter() - t0 < 5  # no network wait, no retries
    message = str(e.value)
    assert "local Hugging Face cache" in message and "AFTER_ALLOW_DOWNLOAD=1" in message
    assert "snapshot_download('after-tests/no-such-model'" in message


def test_bad_local_paths_and_unsupported_models(tmp_path: Path) -> None:
    with pytest.raises(AfterError, match="no such model folder"):
        load_backbone(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AfterError, match=r"no config\.json"):
        load_backbone(str(tmp_path / "empty"))
    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(AfterError, match="'bert' model; supported"):
        load_backbone(str(tmp_path / "bert"))
