"""Streaming generation in constant memory (docs/fam.md, decoding state).

    feed(model, state, tokens)      -> logits, state   any length, any position
    generate(model, prompt, n, ...) -> new tokens      greedy or sampled

In bswa / fam mode the decoding state holds, per layer, only the FAM rows,
the FAM keys of the current block's pass, the current block's keys and a
ring buffer of m blocks, so memory does not grow with the context. `full`
mode keeps an ordinary KV cache of the whole context.

CLI: famjax generate --model_dir DIR --prompt TEXT [--max_new_tokens N]
     [--attention fam --block_size B --memory_segments m --fam_length F]
     [--fam_logit_bias=B]
The text is printed as it is produced and stops at the tokenizer's EOS. The
model directory's own tokenizer (extra/tokenizer/) encodes the prompt; a
directory without one must be a byte model (vocab_size 259).
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

from famjax import cli_args
from famjax.errors import UserError
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


DEFAULT_CHUNK = 16


def generate_chunks(model, prompt, max_new_tokens: int, *,
                    temperature: float = 0.0, top_k: Optional[int] = None,
                    seed: int = 0, eos_id: Optional[int] = None,
                    chunk: int = DEFAULT_CHUNK):
  """Yield the new tokens after `prompt` [b, T] (T >= 1) as they are made:
  arrays [b, c], `chunk` tokens per jitted call (the last one cut to
  max_new_tokens). Stops once every sequence has emitted `eos_id` (a
  sequence that ended repeats eos) or after max_new_tokens.

  Token i is drawn with the key fold_in(key(seed), i): the same tokens
  whatever the chunk size. `full` mode grows its KV cache as it goes.
  """
  if (not isinstance(max_new_tokens, (int, np.integer))
      or isinstance(max_new_tokens, bool) or max_new_tokens < 0):
    raise UserError(f"max_new_tokens must be an integer >= 0, got "
                    f"{max_new_tokens!r}.")
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise UserError("prompt must be [batch, length] with length >= 1.")
  if max_new_tokens == 0:
    return
  s = Streamer(model)
  b, t = prompt.shape
  full = model.cfg.attention.mode == "full"
  state = s.init(b, max_len=t + min(max_new_tokens, 4 * chunk) if full
                 else None)
  logits, state = s.feed(state, prompt)
  run = _decode_loop(s.gdef, int(chunk), float(temperature), top_k, eos_id)
  carry = (state, logits[:, -1], jnp.zeros((b,), bool), jnp.int32(0))
  key = jax.random.key(seed)
  made = 0
  while made < max_new_tokens:
    if full:
      carry = (_grow_cache(carry[0], t + made + chunk),) + carry[1:]
    carry, toks = run(s.params, carry, key)
    toks = np.asarray(toks)[:, :max_new_tokens - made]
    made += toks.shape[1]
    yield toks
    if eos_id is not None and bool(np.all(np.asarray(carry[2]))):
      return


def _grow_cache(state, need: int):
  """A full-attention state whose KV cache holds at least `need` positions
  (doubled when it must grow, so few shapes get compiled)."""
  cap = state["cache_k"].shape[2]
  if need <= cap:
    return state
  new = max(need, 2 * cap)
  pad = [(0, 0)] * state["cache_k"].ndim
  pad[2] = (0, new - cap)
  return dict(state, cache_k=jnp.pad(state["cache_k"], pad),
              cache_v=jnp.pad(state["cache_v"], pad))


def generate(model, prompt, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: Optional[int] = None, seed: int = 0,
             eos_id: Optional[int] = None, chunk: int = DEFAULT_CHUNK):
  """New tokens [b, n] after `prompt` [b, T] (T >= 1): n = max_new_tokens,
  or, once every sequence has emitted `eos_id`, the position of the last
  sequence's first eos + 1 (a sequence that ended earlier repeats eos).
  Decoding stops there (see `generate_chunks`)."""
  parts = list(generate_chunks(model, prompt, max_new_tokens,
                               temperature=temperature, top_k=top_k,
                               seed=seed, eos_id=eos_id, chunk=chunk))
  b = np.asarray(prompt).shape[0]
  out = (np.concatenate(parts, 1) if parts
         else np.zeros((b, 0), np.int32))
  if eos_id is not None and out.size:
    is_eos = out == eos_id
    if is_eos.any(1).all():
      out = out[:, :int(is_eos.argmax(1).max()) + 1]
  return jnp.asarray(out)


@functools.lru_cache(maxsize=16)
def _decode_loop(gdef, n, temperature, top_k, eos_id):
  """One jitted call: n single-token steps from carry (state, last logits,
  done [b], step) -> (new carry, tokens [b, n])."""
  @jax.jit
  def run(params, carry, key):
    model = nnx.merge(gdef, params)

    def body(carry, _):
      state, logits, done, i = carry
      tok = _sample(logits, jax.random.fold_in(key, i), temperature, top_k)
      if eos_id is not None:
        tok = jnp.where(done, eos_id, tok)
        done = done | (tok == eos_id)
      out, state = model.stream(state, tok[:, None])
      return (state, out[:, -1], done, i + 1), tok

    carry, toks = jax.lax.scan(body, carry, None, length=n)
    return carry, toks.T
  return run


def _parser():
  ap = argparse.ArgumentParser(prog="famjax generate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model_dir", required=True)
  ap.add_argument("--prompt", required=True)
  ap.add_argument("--max_new_tokens", type=int, default=32,
                  help="at most this many new tokens (stops earlier at EOS)")
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top_k", type=int, default=None)
  ap.add_argument("--seed", type=int, default=0)
  cli_args.add_attention_flags(ap)
  return ap


def _load(args):
  """(model, vocabulary, prompt ids [1, T]) for the CLI; UserError on a
  mistake, before anything is compiled."""
  from famjax import params_io
  from famjax.data.vocab import model_vocabulary
  if args.max_new_tokens < 0:
    raise UserError(f"--max_new_tokens must be >= 0, got {args.max_new_tokens}.")
  if args.top_k is not None and args.top_k < 1:
    raise UserError(f"--top_k must be >= 1, got {args.top_k}.")
  try:
    cfg = params_io.load_config(args.model_dir)
  except ValueError as e:
    raise UserError(str(e)) from e
  vocab = model_vocabulary(args.model_dir)   # never bytes for a BPE model
  ids = _encode_prompt(vocab, args.prompt)
  if not ids:
    raise UserError("--prompt encodes to no tokens; give some text.")
  try:   # a bad attention choice or damaged weights: the user's to fix
    att = cli_args.attention_from_args(args, base=cfg.attention)
    _, model = params_io.load_model_dir(args.model_dir,
                                        attention=att or cfg.attention)
  except ValueError as e:
    raise UserError(str(e)) from e
  check_token_ids(ids, cfg.vocab_size, "the prompt's tokens")
  return model, vocab, np.asarray(ids, np.int32)[None]


def _encode_prompt(vocab, text):
  """The prompt's ids, with the special tokens the tokenizer adds (e.g.
  Gemma's <bos>)."""
  tok = getattr(vocab, "tokenizer", None)
  if tok is not None:
    return list(tok.encode(text, add_special_tokens=True).ids)
  return list(vocab.encode(text))


class _TextStream:
  """Prints decoded text as tokens arrive (flushed), never half a character."""

  def __init__(self, vocab, out):
    self.vocab, self.out = vocab, out
    self.ids, self.shown = [], ""

  def add(self, ids):
    self.ids += [int(i) for i in ids]
    text = self.vocab.decode(self.ids)
    if text.startswith(self.shown) and not text.endswith("\ufffd"):
      self.out.write(text[len(self.shown):])
      self.out.flush()
      self.shown = text
      if len(self.ids) > 64 and text[-1:].isspace():   # keep decoding cheap
        self.ids, self.shown = [], ""

  def end(self):
    text = self.vocab.decode(self.ids)
    if text.startswith(self.shown):
      self.out.write(text[len(self.shown):])
    self.out.write("\n")
    self.out.flush()


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    model, vocab, ids = _load(args)
    eos = getattr(vocab, "eos_id", None)
    chunks = generate_chunks(model, ids, args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k,
                             seed=args.seed, eos_id=eos)
    stream = _TextStream(vocab, sys.stdout)
    for toks in chunks:
      row = [int(t) for t in toks[0]]
      stream.add(row[:row.index(eos)] if eos in row else row)
    stream.end()
  except (UserError, FileNotFoundError) as e:
    print(f"famjax generate: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
