"""Tiny random HF models of every supported family -> famjax -> HF.

The reference is `transformers` itself (eager attention, float32): famjax
`full` must give its logits; famjax `bswa` must give its logits under the
equivalent explicit 4-D block mask; an export must load back into
transformers with identical weights.
"""
import json
import os

import numpy as np
import pytest

from tests import convert_util as U

from famjax.config import AttentionConfig
from famjax.convert import export, hf_config as hf_conv
from famjax.convert.importer import from_pretrained, load as load_hf
from famjax.convert.importer import read_checkpoint_path as read_hf

T = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{family: (path, HF model)}, built once for the module."""
  out = {}
  for fam in U.FAMILIES:
    path = str(tmp_path_factory.mktemp(fam))
    out[fam] = (path, U.make_hf_model(fam, path))
  return out


@pytest.mark.parametrize("family", U.FAMILIES)
def test_full_logits_match_transformers(models, family):
  path, ref = models[family]
  ids = U.tokens(2, T, seed=1)
  want = U.hf_logits(ref, ids)
  got = U.famjax_logits(from_pretrained(path), ids)
  assert np.abs(want).max() > 1.0       # a real signal, not near-zero logits
  assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("family", U.FAMILIES)
@pytest.mark.parametrize("block,memory", [(4, 1), (3, 2)])
def test_bswa_logits_match_transformers_with_block_mask(models, family, block,
                                                        memory):
  path, ref = models[family]
  ids = U.tokens(2, T, seed=2)
  mask = U.hf_bswa_mask(family, ref.config, T, block, memory, batch=2)
  want = U.hf_logits(ref, ids, attention_mask=mask)
  att = AttentionConfig(mode="bswa", block_size=block, memory_segments=memory)
  got = U.famjax_logits(from_pretrained(path, attention=att), ids)
  assert np.abs(got - want).max() <= 1e-4
  # and the block mask matters (unless a native window on every layer is
  # already narrower than the blocks, as Mistral's 5 is for B=4, m=1)
  window = ref.config.sliding_window if family == "mistral" else None
  if not np.array_equal(U.bswa_visible(T, block, memory, window),
                        U.bswa_visible(T, T, 0, window)):
    assert np.abs(U.hf_logits(ref, ids) - want).max() > 1e-2


def test_fam_adds_only_a_prompt(models):
  path, _ = models["llama"]
  cfg, params = load_hf(path)
  att = AttentionConfig(mode="fam", block_size=8, memory_segments=1,
                        fam_length=8)
  model = from_pretrained(path, attention=att, seed=3)
  from famjax.params_io import params_dict
  got = params_dict(model)
  prompt = np.asarray(got.pop("fam_prompt"))
  assert prompt.shape == (8, cfg.d_model)
  assert 0.015 < prompt.std() < 0.025 and abs(prompt.mean()) < 0.005
  import jax
  flat_a = jax.tree_util.tree_leaves_with_path(got)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(params))
  assert len(flat_a) == len(flat_b)
  for k, v in flat_a:
    np.testing.assert_array_equal(np.asarray(v), flat_b[k])
  logits = U.famjax_logits(model, U.tokens(1, T))
  assert np.isfinite(logits).all()


@pytest.mark.parametrize("family", U.FAMILIES)
def test_export_loads_in_transformers_unchanged(models, family, tmp_path):
  path, ref = models[family]
  cfg, params, info = read_hf(path)
  out = export.export_params(cfg, params, str(tmp_path / "hf"),
                             hf_base=info["hf_config"])
  back = U.load_hf_model(out)
  assert type(back) is type(ref)
  sd_ref, sd_back = ref.state_dict(), back.state_dict()
  assert set(sd_ref) == set(sd_back)
  for k in sd_ref:
    np.testing.assert_array_equal(sd_back[k].numpy(), sd_ref[k].numpy(),
                                  err_msg=k)
  ids = U.tokens(1, T, seed=4)
  np.testing.assert_array_equal(U.hf_logits(back, ids), U.hf_logits(ref, ids))


def test_export_config_round_trips(models):
  for family in U.FAMILIES:
    path, _ = models[family]
    cfg, _, info = read_hf(path)
    again = hf_conv.config_from_hf(hf_conv.config_to_hf(cfg, info["hf_config"]))
    assert again == cfg, family


def test_sharded_checkpoint(tmp_path):
  path = str(tmp_path / "sharded")
  ref = U.make_hf_model("qwen2", path, seed=5, max_shard_size="40KB")
  assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
  assert not os.path.isfile(os.path.join(path, "model.safetensors"))
  ids = U.tokens(1, T, seed=5)
  got = U.famjax_logits(from_pretrained(path), ids)
  assert np.abs(got - U.hf_logits(ref, ids)).max() <= 1e-4


def test_bfloat16_checkpoint(tmp_path):
  import torch
  path = str(tmp_path / "bf16")
  ref = U.make_hf_model("llama", path, seed=6)
  ref.to(torch.bfloat16).save_pretrained(path)   # bf16 safetensors
  assert json.load(open(os.path.join(path, "config.json")))["dtype"] == \
      "bfloat16"
  ref = U.load_hf_model(path)       # transformers upcasts the bf16 weights
  ids = U.tokens(1, T, seed=6)
  got = U.famjax_logits(from_pretrained(path), ids)
  assert np.abs(got - U.hf_logits(ref, ids)).max() <= 1e-4


def test_gemma3_multimodal_text_part(tmp_path):
  import torch
  import transformers as tr
  tc = U.hf_config("gemma3").to_dict()
  tc["vocab_size"] = 300
  vc = tr.SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2,
                             image_size=28, patch_size=14)
  cfg = tr.Gemma3Config(text_config=tc, vision_config=vc.to_dict(),
                        mm_tokens_per_image=4, image_token_index=299,
                        boi_token_index=297, eoi_token_index=298)
  torch.manual_seed(7)
  ref = tr.Gemma3ForConditionalGeneration(cfg).eval()
  U.randomize(ref, 7)
  ref.save_pretrained(str(tmp_path))
  ref = tr.Gemma3ForConditionalGeneration.from_pretrained(
      str(tmp_path), attn_implementation="eager").eval()
  ids = U.tokens(1, T, seed=7, vocab=290)
  got = U.famjax_logits(from_pretrained(str(tmp_path)), ids)
  assert np.abs(got - U.hf_logits(ref, ids)).max() <= 1e-4


def test_tiny_gguf_matches_transformers(tmp_path):
  """llama.cpp's Q/K permutation is undone (the real GGUFs are checked in
  test_convert_real against transformers' own GGUF loader)."""
  path = str(tmp_path / "hf")
  ref = U.make_hf_model("llama_plain", path, seed=8)
  gguf_path = U.write_tiny_gguf(ref, str(tmp_path / "tiny.gguf"))
  ids = U.tokens(2, T, seed=8)
  got = U.famjax_logits(from_pretrained(gguf_path), ids)
  assert np.abs(got - U.hf_logits(ref, ids)).max() <= 1e-4


@pytest.mark.parametrize("legacy", [
    dict(model_type="llama", rope_theta=500000.0, rope_scaling={
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    dict(model_type="llama", rope_theta=10000.0,
         rope_scaling={"type": "linear", "factor": 2.0}),
    dict(model_type="gemma3_text", rope_theta=1000000.0,
         rope_local_base_freq=10000.0, sliding_window_pattern=6,
         sliding_window=512, num_hidden_layers=8, query_pre_attn_scalar=256,
         rope_scaling={"factor": 8.0, "rope_type": "linear"}),
    dict(model_type="qwen2", use_sliding_window=True, sliding_window=64,
         max_window_layers=2, num_hidden_layers=3),
])
def test_older_config_fields_read_as_transformers_reads_them(legacy):
  """config.json files on the Hub predate rope_parameters / layer_types:
  famjax must read them as transformers does (its class normalises them)."""
  from transformers import AutoConfig
  raw = dict(U.TINY, **legacy)
  ours = hf_conv.config_from_hf(raw)
  normalised = AutoConfig.for_model(**raw).to_dict()
  assert "rope_parameters" in normalised
  assert ours == hf_conv.config_from_hf(normalised)
  if "rope_scaling" in legacy:
    assert ours.rope_scaling == legacy["rope_scaling"].get(
        "rope_type", legacy["rope_scaling"].get("type"))
