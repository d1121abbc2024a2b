"""Generation and the streaming driver against the whole-sequence forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famjax import decode
from tests.helpers import jit_forward, perturbed_model, tiny_config


@pytest.mark.parametrize("mode", ["full", "bswa", "fam"])
def test_greedy_generate_agrees_with_the_whole_sequence_forward(mode):
  model = perturbed_model(tiny_config(mode))
  prompt = jax.random.randint(jax.random.key(1), (2, 6), 0, 40)
  new = decode.generate(model, prompt, 7)
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
