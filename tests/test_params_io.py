"""Model directories: round trip, atomic writes, clear errors."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famjax import AttentionConfig, params_io
from tests.helpers import perturbed_model, tiny_config


def test_round_trip_and_switch_to_fam(tmp_path):
  cfg = tiny_config("full")
  model = perturbed_model(cfg)
  path = params_io.save_model_dir(str(tmp_path / "m"), cfg,
                                  params_io.params_dict(model))
  cfg2, model2 = params_io.load_model_dir(path)
  assert cfg2 == cfg
  tokens = jnp.arange(10)[None] % 40
  np.testing.assert_array_equal(model(tokens), model2(tokens))
  # Switching to FAM at load time adds fam_prompt and nothing else.
  att = AttentionConfig("fam", 4, 1, 2)
  cfg3, model3 = params_io.load_model_dir(path, attention=att)
  new = set(params_io.params_dict(model3)) - set(params_io.params_dict(model))
  assert new == {"fam_prompt"}
  assert cfg3.attention == att
  # With m >= n, BSWA reads the same weights and equals full.
  _, model4 = params_io.load_model_dir(
      path, attention=AttentionConfig("bswa", 4, 8, 2))
  np.testing.assert_allclose(model4(tokens), model(tokens), atol=1e-5)


def test_switch_to_fam_decay_adds_the_decay_weight(tmp_path):
  """A model directory without the learned decay loads with fam_decay set:
  every layer's decay starts at lambda0; the other weights are the saved
  ones; saved with the decay, it loads back as it was."""
  cfg = tiny_config("fam")
  model = perturbed_model(cfg)
  path = params_io.save_model_dir(str(tmp_path / "m"), cfg,
                                  params_io.params_dict(model))
  att = dataclasses.replace(cfg.attention, fam_decay=0.8)
  cfg2, model2 = params_io.load_model_dir(path, attention=att)
  np.testing.assert_allclose(np.asarray(model2.layers.fam_keep()), 0.8,
                             rtol=1e-6)
  old, new = params_io.params_dict(model), params_io.params_dict(model2)
  assert set(new["layers"]) - set(old["layers"]) == {"fam_decay_logit"}
  np.testing.assert_array_equal(new["layers"]["q"]["kernel"],
                                old["layers"]["q"]["kernel"])
  np.testing.assert_array_equal(new["fam_prompt"], old["fam_prompt"])
  model2.layers.fam_decay_logit.set_value(jnp.asarray([0.3, -0.2]))
  path2 = params_io.save_model_dir(str(tmp_path / "m2"), cfg2,
                                   params_io.params_dict(model2))
  cfg3, model3 = params_io.load_model_dir(path2)
  assert cfg3.attention.fam_decay == 0.8
  np.testing.assert_array_equal(model3.layers.fam_decay_logit[...],
                                model2.layers.fam_decay_logit[...])


def test_existing_output_is_never_overwritten(tmp_path):
  cfg = tiny_config("full")
  target = tmp_path / "m"
  target.mkdir()
  (target / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    params_io.save_model_dir(str(target), cfg,
                             params_io.params_dict(perturbed_model(cfg)))
  assert (target / "keep.txt").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["m"]      # no temp dir left behind


def test_failed_write_leaves_nothing(tmp_path):
  cfg = tiny_config("full")
  bad = {"embed": {"embedding": object()}}           # cannot be saved
  with pytest.raises(Exception):
    params_io.save_model_dir(str(tmp_path / "m"), cfg, bad)
  assert os.listdir(tmp_path) == []


def test_wrong_shapes_and_missing_dirs_are_named(tmp_path):
  cfg = tiny_config("full")
  path = params_io.save_model_dir(str(tmp_path / "m"), cfg,
                                  params_io.params_dict(perturbed_model(cfg)))
  with pytest.raises(ValueError, match=r"weight layers\.\w+\.kernel has shape \(2, 32, 2, 8\), the model expects \(2, 32, 2, 16\)"):
    params_io.load_model_dir(path, num_heads=2, num_kv_heads=2)
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    params_io.load_model_dir(str(tmp_path / "nope"))


def test_corrupt_weights_are_reported(tmp_path):
  cfg = tiny_config("full")
  path = params_io.save_model_dir(str(tmp_path / "m"), cfg,
                                  params_io.params_dict(perturbed_model(cfg)))
  for root, _, files in os.walk(os.path.join(path, "params")):
    for f in files:
      p = os.path.join(root, f)
      if os.path.getsize(p) > 64:
        with open(p, "r+b") as fh:
          fh.truncate(16)
  with pytest.raises(ValueError, match="corrupt or incomplete"):
    params_io.load_model_dir(path)


def test_output_dir_mistakes_are_named_before_writing(tmp_path):
  from famjax.errors import UserError
  cfg = tiny_config("full")
  params = params_io.params_dict(perturbed_model(cfg))
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="is a file"):
    params_io.save_model_dir(str(tmp_path / "file" / "sub" / "m"), cfg, params)
  with pytest.raises(UserError, match="not a directory"):
    params_io.save_model_dir(str(tmp_path / "file"), cfg, params)
  assert sorted(os.listdir(tmp_path)) == ["file"]


def test_extra_from_keeps_the_tokenizer_and_hf_config(tmp_path):
  cfg = tiny_config("full")
  params = params_io.params_dict(perturbed_model(cfg))
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer.json").write_text("{}")
  src = params_io.save_model_dir(
      str(tmp_path / "a"), cfg, params,
      extra_files={"tokenizer": str(tok), "hf_config.json": b"{}"})
  out = params_io.save_model_dir(str(tmp_path / "b"), cfg, params,
                                 extra_from=src)
  for f in ("tokenizer/tokenizer.json", "hf_config.json"):
    assert (tmp_path / "b" / "extra" / f).read_text() == "{}", f
  assert out == str(tmp_path / "b")


def test_fam_prompt_is_the_same_for_a_seed_on_every_path(tmp_path):
  """Converting, switching a saved model to FAM and building a fresh FAM
  model with one seed give one prompt (params_io.new_weights)."""
  from flax import nnx
  from famjax import Transformer
  from famjax.convert.importer import with_attention
  cfg = tiny_config("full")
  params = jax.tree.map(np.asarray, params_io.params_dict(perturbed_model(cfg)))
  path = params_io.save_model_dir(str(tmp_path / "m"), cfg, params)
  att = AttentionConfig("fam", 4, 1, 2)
  converted = with_attention(cfg, params, {}, att, seed=5)[1]["fam_prompt"]
  switched = params_io.load_model_dir(path, attention=att, seed=5)[1]
  fresh = Transformer(cfg.replace(attention=att), rngs=nnx.Rngs(5))
  np.testing.assert_array_equal(converted, switched.fam_prompt[...])
  # the same draws; eager vs jitted scaling may differ in the last bit
  np.testing.assert_allclose(converted, fresh.fam_prompt[...], rtol=1e-6)
  other = with_attention(cfg, params, {}, att, seed=6)[1]["fam_prompt"]
  assert not np.array_equal(converted, other)
