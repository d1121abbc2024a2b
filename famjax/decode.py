"""Streaming generation in constant memory (SPEC "Decoding").

    feed(model, state, tokens)      -> logits, state   any length, any position
    generate(model, prompt, n, ...) -> new tokens      greedy or sampled

In bswa / fam mode the decoding state holds, per layer, only the FAM rows,
the FAM keys of the current block's pass, the current block's keys and a
ring buffer of m blocks, so memory does not grow with the context. `full`
mode keeps an ordinary KV cache of the whole context.

CLI: famjax generate --model_dir DIR --prompt TEXT [--max_new_tokens N]
     [--attention fam --block_size B --memory_segments m --fam_length F]
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from famjax.token_ids import check_token_ids  # noqa: F401  (public here too)


@functools.lru_cache(maxsize=16)
def _compiled(gdef):
  def stream(params, state, tokens):
    return nnx.merge(gdef, params).stream(state, tokens)
  return jax.jit(stream)


@functools.lru_cache(maxsize=16)
def _compiled_init(gdef, batch, max_len):
  def init(params, fam_state):
    return nnx.merge(gdef, params).init_stream(batch, max_len=max_len,
                                               fam_state=fam_state)
  return jax.jit(init)


class Streamer:
  """Holds a model's split state and a jitted `stream` for repeated calls."""

  def __init__(self, model):
    self.cfg = model.cfg
    self.gdef, self.params = nnx.split(model)
    self._stream = _compiled(self.gdef)

  def init(self, batch: int, max_len: Optional[int] = None, fam_state=None):
    if self.cfg.attention.mode != "full":
      max_len = None          # the state of bswa / fam does not depend on it
    return _compiled_init(self.gdef, batch, max_len)(self.params, fam_state)

  def step(self, state, tokens):
    return self._stream(self.params, state, tokens)

  def feed(self, state, tokens):
    """Feed tokens [b, T] at the state's position, split at block boundaries."""
    tokens = jnp.asarray(tokens, jnp.int32)
    check_token_ids(tokens, self.cfg.vocab_size)
    att = self.cfg.attention
    pos = int(state["pos"])
    if att.mode == "full":
      cap = state["cache_k"].shape[2]
      if pos + tokens.shape[1] > cap:
        raise ValueError(f"full-attention KV cache holds {cap} positions; "
                         f"feeding {tokens.shape[1]} tokens at position {pos} "
                         "overflows it (raise max_len, or use bswa / fam).")
      return self.step(state, tokens)
    outs, i, blk = [], 0, att.block_size
    while i < tokens.shape[1]:
      c = min(blk - pos % blk, tokens.shape[1] - i)
      logits, state = self.step(state, tokens[:, i:i + c])
      outs.append(logits)
      i += c
      pos += c
    return jnp.concatenate(outs, axis=1), state


def feed(model, state, tokens):
  return Streamer(model).feed(state, tokens)


def _sample(logits, key, temperature, top_k):
  if temperature <= 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def generate(model, prompt, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: Optional[int] = None, seed: int = 0,
             eos_id: Optional[int] = None):
  """New tokens [b, max_new_tokens] after `prompt` [b, T] (T >= 1).

  After `eos_id` a sequence repeats eos. The prompt is fed block-aligned;
  the new tokens are produced by one jitted `lax.scan` of single-token steps.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError("prompt must be [batch, length] with length >= 1.")
  s = Streamer(model)
  b, t = prompt.shape
  state = s.init(b, max_len=t + max_new_tokens)
  logits, state = s.feed(state, prompt)
  return _decode_loop(s.gdef, max_new_tokens, float(temperature), top_k,
                      eos_id)(s.params, state, logits[:, -1],
                              jax.random.key(seed))


@functools.lru_cache(maxsize=16)
def _decode_loop(gdef, n, temperature, top_k, eos_id):
  @jax.jit
  def run(params, state, last_logits, key):
    model = nnx.merge(gdef, params)

    def body(carry, key):
      state, logits, done = carry
      tok = _sample(logits, key, temperature, top_k)
      if eos_id is not None:
        tok = jnp.where(done, eos_id, tok)
        done = done | (tok == eos_id)
      out, state = model.stream(state, tok[:, None])
      return (state, out[:, -1], done), tok

    done = jnp.zeros(last_logits.shape[:1], bool)
    _, toks = jax.lax.scan(body, (state, last_logits, done),
                           jax.random.split(key, n))
    return toks.T
  return run


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="famjax generate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model_dir", required=True)
  ap.add_argument("--prompt", required=True)
  ap.add_argument("--max_new_tokens", type=int, default=32)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top_k", type=int, default=None)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--attention", choices=["full", "bswa", "fam"], default=None)
  ap.add_argument("--block_size", type=int, default=None)
  ap.add_argument("--memory_segments", type=int, default=None)
  ap.add_argument("--fam_length", type=int, default=None)
  args = ap.parse_args(argv)
  from famjax import params_io
  from famjax.config import AttentionConfig
  try:
    cfg = params_io.load_config(args.model_dir)
    att = cfg.attention
    if args.attention:
      att = AttentionConfig(
          mode=args.attention,
          block_size=args.block_size or att.block_size,
          memory_segments=(args.memory_segments if args.memory_segments
                           is not None else att.memory_segments),
          fam_length=args.fam_length or att.fam_length)
    cfg, model = params_io.load_model_dir(args.model_dir, attention=att)
    vocab = _vocabulary(args.model_dir)
    ids = np.asarray(vocab.encode(args.prompt), np.int32)[None]
    out = generate(model, ids, args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k,
                   seed=args.seed, eos_id=getattr(vocab, "eos_id", None))
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"famjax generate: {e}", file=sys.stderr)
    return 2
  print(vocab.decode(np.asarray(out[0]).tolist()))
  return 0


def _vocabulary(model_dir):
  """The model's own tokenizer if the directory has one, else bytes."""
  from famjax.data.vocab import get_vocabulary, has_hf_tokenizer
  return get_vocabulary(model_dir if has_hf_tokenizer(model_dir) else "byte")


if __name__ == "__main__":
  sys.exit(main())
