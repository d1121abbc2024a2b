"""Generation and the streaming driver against the whole-sequence forward;
stopping at EOS; the `famjax generate` CLI (streamed text, one-line errors)."""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from famjax import ModelConfig, Transformer, decode, params_io
from tests.helpers import jit_forward, perturbed_model, tiny_config


@pytest.mark.parametrize("mode", ["full", "bswa", "fam"])
def test_greedy_generate_agrees_with_the_whole_sequence_forward(mode):
  model = perturbed_model(tiny_config(mode))
  prompt = jax.random.randint(jax.random.key(1), (2, 6), 0, 40)
  new = decode.generate(model, prompt, 7, chunk=3)   # 3 chunks, full grows
  assert new.shape == (2, 7)
  seq = jnp.concatenate([prompt, new], 1)
  # Independent check: one teacher-forced forward over prompt + generated
  # tokens; greedy decoding means every generated token is the argmax of the
  # forward's logits at the position before it.
  pred = jnp.argmax(jit_forward(model)(seq), -1)
  np.testing.assert_array_equal(np.asarray(pred[:, 5:-1]), np.asarray(new))


def test_feed_splits_at_block_boundaries_from_any_position():
  model = perturbed_model(tiny_config("fam", block=4, f=2))
  tokens = jax.random.randint(jax.random.key(2), (1, 15), 0, 40)
  full = jit_forward(model)(tokens)
  s = decode.Streamer(model)
  state = s.init(1)
  outs = []
  for lo, hi in [(0, 3), (3, 9), (9, 10), (10, 15)]:   # unaligned pieces
    out, state = s.feed(state, tokens[:, lo:hi])
    outs.append(out)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-4)
  assert int(state["pos"]) == 15


def test_sampling_is_seeded():
  model = perturbed_model(tiny_config("fam"))
  prompt = jnp.ones((1, 5), jnp.int32)
  a = decode.generate(model, prompt, 8, temperature=1.0, seed=3)
  b = decode.generate(model, prompt, 8, temperature=1.0, seed=3)
  c = decode.generate(model, prompt, 8, temperature=1.0, seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_eos_ends_a_sequence():
  model = perturbed_model(tiny_config("bswa"))
  prompt = jnp.ones((1, 3), jnp.int32)
  greedy = np.asarray(decode.generate(model, prompt, 6))[0]
  eos = int(greedy[1])
  out = np.asarray(decode.generate(model, prompt, 6, eos_id=eos))[0]
  first = list(out).index(eos)
  assert (out[first:] == eos).all()
  np.testing.assert_array_equal(out[:first], greedy[:first])


def test_token_ids_outside_the_vocabulary_are_refused():
  model = perturbed_model(tiny_config("fam"))
  with pytest.raises(ValueError, match="id 40, outside the model vocabulary"):
    decode.generate(model, jnp.array([[1, 40]]), 2)
  with pytest.raises(ValueError, match="id -1"):
    decode.generate(model, jnp.array([[-1, 2]]), 2)


def test_full_cache_overflow_is_refused():
  model = perturbed_model(tiny_config("full"))
  s = decode.Streamer(model)
  with pytest.raises(ValueError, match="KV cache holds 4"):
    s.feed(s.init(1, max_len=4), jnp.ones((1, 5), jnp.int32))


def test_decoding_stops_as_soon_as_every_sequence_emitted_eos():
  model = perturbed_model(tiny_config("bswa"))
  prompt = jnp.ones((1, 3), jnp.int32)
  greedy = np.asarray(decode.generate(model, prompt, 6, chunk=4))[0]
  eos = int(greedy[2])
  first = list(greedy).index(eos)
  t0 = time.perf_counter()
  chunks = list(decode.generate_chunks(model, prompt, 10 ** 9, eos_id=eos,
                                       chunk=4))
  assert len(chunks) == 1 + first // 4      # not 10**9 / 4 of them
  out = np.asarray(decode.generate(model, prompt, 10 ** 9, eos_id=eos,
                                   chunk=4))[0]
  assert time.perf_counter() - t0 < 120
  np.testing.assert_array_equal(out, greedy[:first + 1])


def eos_model_dir(path):
  """A byte model whose greedy answer to any prompt is "A" then EOS: the
  layers add nothing (zero output weights), token embeddings are one of two
  directions, the untied head maps them to 'A' (id 68) and EOS (id 1)."""
  cfg = ModelConfig(vocab_size=259, d_model=32, num_layers=1, num_heads=2,
                    ffn_dim=64, tie_embeddings=False)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  p = jax.tree.map(np.array, params_io.params_dict(model))
  p["layers"]["o"]["kernel"][...] = 0
  p["layers"]["mlp"]["down"]["kernel"][...] = 0
  emb = np.zeros((259, 32), np.float32)
  emb[:, 0] = 1.0                      # every token: direction 0 ...
  emb[68] = 0.0
  emb[68, 1] = 1.0                     # ... except 'A': direction 1
  p["embed"]["embedding"] = emb
  head = np.zeros((32, 259), np.float32)
  head[0, 68], head[0, 1], head[1, 1] = 2.0, 1.0, 2.0
  p["lm_head"]["kernel"] = head
  return params_io.save_model_dir(path, cfg, p)


def run_cli(capsys, *argv):
  capsys.readouterr()
  rc = decode.main(list(argv))
  out, err = capsys.readouterr()
  return rc, out, err


def test_cli_streams_and_stops_at_eos(tmp_path, capsys):
  d = eos_model_dir(str(tmp_path / "m"))
  t0 = time.perf_counter()
  rc, out, err = run_cli(capsys, "--model_dir", d, "--prompt", "xyz",
                         "--max_new_tokens", str(10 ** 8))
  assert rc == 0, err
  assert out == "A\n"
  assert time.perf_counter() - t0 < 120


@pytest.mark.parametrize("case", ["negative", "missing", "no_tokenizer",
                                  "empty_prompt"])
def test_cli_mistakes_are_one_line(tmp_path, capsys, case):
  d = str(tmp_path / "m")
  args = {"negative": ["--max_new_tokens", "-5"], "missing": [],
          "no_tokenizer": [], "empty_prompt": []}[case]
  if case == "missing":
    d = str(tmp_path / "nope")
  elif case == "no_tokenizer":        # a 40-token model that lost its tokenizer
    cfg = tiny_config("full")
    params_io.save_model_dir(d, cfg, params_io.params_dict(
        perturbed_model(cfg)))
  else:
    eos_model_dir(d)
  prompt = "" if case == "empty_prompt" else "hi"
  rc, out, err = run_cli(capsys, "--model_dir", d, "--prompt", prompt, *args)
  assert rc == 2 and out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  want = {"negative": "--max_new_tokens", "missing": "nope",
          "no_tokenizer": "no tokenizer", "empty_prompt": "--prompt"}[case]
  assert want in lines[0], lines[0]
