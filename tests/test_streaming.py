"""Streaming (`init_stream` / `stream`) equals the whole-sequence forward.

Chunks never cross a block boundary; each block is fed by one of the
patterns [B], [3, B-3], [1]*B, [1, B-1] in turn (whole block, a few tokens
then the rest, token by token), so one stream mixes all of them and needs
only three chunk shapes (one compile each).
"""
import itertools

import jax
import numpy as np
import pytest

from tests import reference as R
from tests.helpers import (VOCAB, fast_for, gemma_cfg, llama_cfg, max_abs,
                           tokens)

TOL = 1e-4


def block_patterns(block):
  return [[block], [3, block - 3], [1] * block, [1, block - 1]]


def chunks(length, block, patterns):
  """Chunk sizes covering `length` tokens, none crossing a block boundary."""
  out, pos = [], 0
  for pattern in itertools.cycle(patterns):
    for size in pattern:
      size = min(size, length - pos)
      if size <= 0:
        return out
      out.append(size)
      pos += size


def shapes(tree):
  return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


def run_stream(fast, tok, patterns, max_len=None):
  """Feed tok [b, T] in chunks. Returns (logits [b, T, V], final state,
  {number of whole blocks fed: state after them})."""
  b, t = tok.shape
  blk = fast.cfg.attention.block_size
  state = fast.init_stream(b, max_len)
  at_block = {0: state}
  outs, pos = [], 0
  for size in chunks(t, blk, patterns):
    assert pos // blk == (pos + size - 1) // blk          # inside one block
    logits, state = fast.stream(state, tok[:, pos:pos + size])
    assert logits.shape == (b, size, VOCAB)
    outs.append(np.asarray(logits))
    pos += size
    if pos % blk == 0:
      at_block[pos // blk] = state
  assert pos == t
  return np.concatenate(outs, axis=1), state, at_block


MIXED = [[3, 1], [1, 1, 1, 1], [1, 3]]           # chunk sizes 3 and 1 only

# (config, batch, T, block patterns). The configs and shapes are those of
# test_attention_modes.py, so that the forward compiles are shared.
STREAMS = [
    pytest.param(llama_cfg("fam", 4, 2, 1), 1, 12, block_patterns(4),
                 id="fam-llama-m2-F1"),
    pytest.param(gemma_cfg("fam", 4, 0, 4), 1, 10, MIXED,
                 id="fam-gemma-m0-F=B"),
    pytest.param(llama_cfg("fam", 4, 2, 1).with_attention(fam_logit_bias=-1.5),
                 1, 12, block_patterns(4), id="fam-bias-llama-m2-F1"),
    pytest.param(gemma_cfg("fam", 4, 0, 4).with_attention(fam_logit_bias=-2.0),
                 1, 10, MIXED, id="fam-bias-gemma-m0-F=B"),
    pytest.param(gemma_cfg("fam", 4, 0, 4).with_attention(fam_state_rms=0.7),
                 1, 10, MIXED, id="fam-rms-gemma-m0-F=B"),
    pytest.param(llama_cfg("fam", 4, 2, 1).with_attention(fam_decay=0.9),
                 1, 12, block_patterns(4), id="fam-decay-llama-m2-F1"),
    pytest.param(gemma_cfg("bswa", 4, 2), 2, 13, MIXED, id="bswa-gemma-m2"),
    pytest.param(gemma_cfg("full"), 2, 13, MIXED, id="full-gemma"),
]


@pytest.mark.parametrize("cfg,batch,length,patterns", STREAMS)
def test_stream_equals_forward(cfg, batch, length, patterns):
  fast = fast_for(cfg)
  att = cfg.attention
  tok = tokens(batch, length)
  logits, state, at_block = run_stream(
      fast, tok, patterns, max_len=16 if att.mode == "full" else None)
  want, want_state = fast(tok, return_state=True)
  assert max_abs(logits, want) <= TOL
  ref, _ = R.forward(cfg, fast.params, tok)
  assert max_abs(logits, ref) <= TOL
  if att.mode == "fam":
    # state['phi'] after whole blocks is the forward's FAM state
    f = att.fam_length
    assert at_block[0]["phi"].shape == (cfg.num_layers, batch, f, cfg.d_model)
    init = np.stack(R.initial_fam(np, cfg, jax.tree.map(
        lambda a: np.asarray(a, np.float64), fast.params), batch))
    assert max_abs(at_block[0]["phi"], init) <= TOL
    for nb, st in at_block.items():
      if nb == 0:
        continue
      _, ref_state = R.forward(cfg, fast.params, tok[:, :nb * att.block_size])
      assert max_abs(st["phi"], ref_state) <= TOL, nb
    if length % att.block_size == 0:
      assert max_abs(state["phi"], want_state["fam_state"]) <= TOL


def test_stream_with_closed_fam_bias_equals_bswa():
  """fam_logit_bias = -inf (outside the rules) streams exactly bswa's
  logits: the block queries' view of the FAM keys is dropped in the
  streaming step as in the whole-sequence forward."""
  fam = llama_cfg("fam", 4, 2, 1)
  tok = tokens(1, 12)
  closed = fast_for(fam.with_attention(fam_logit_bias=float("-inf")))
  logits, _, _ = run_stream(closed, tok, block_patterns(4))
  bswa = fast_for(llama_cfg("bswa", 4, 2))
  streamed_bswa, _, _ = run_stream(bswa, tok, block_patterns(4))
  assert max_abs(logits, streamed_bswa) <= 1e-6     # the same computation
  assert max_abs(logits, bswa(tok)) <= TOL          # streamed vs whole
  assert max_abs(logits, fast_for(fam)(tok)) > 1e-2      # not the rules


def test_state_size_is_constant():
  """After 2 and after 6 blocks the state has the same arrays, shapes and
  dtypes, O(L (m B + F) d) whatever the context length; the 6-block stream
  still equals the reference."""
  cfg = llama_cfg("fam", 4, 2, 1)
  fast = fast_for(cfg)
  tok = tokens(1, 24, seed=5)
  logits, _, at_block = run_stream(fast, tok, block_patterns(4))
  assert shapes(at_block[2]) == shapes(at_block[6]) == shapes(at_block[0])
  assert int(at_block[6]["pos"]) == 24
  ref, ref_state = R.forward(cfg, fast.params, tok)
  assert max_abs(logits, ref) <= TOL
  assert max_abs(at_block[6]["phi"], ref_state) <= TOL
  # at most the keys and values of m + 1 blocks and of F FAM rows, the F
  # FAM rows themselves, and small bookkeeping.
  att, b = cfg.attention, 1
  kv = cfg.num_layers * b * 2 * cfg.n_kv * cfg.hd * (
      (att.memory_segments + 1) * att.block_size + att.fam_length)
  phi = cfg.num_layers * b * att.fam_length * cfg.d_model
  total = sum(a.size for a in jax.tree.leaves(at_block[6]))
  assert total <= kv + phi + 4 * (att.memory_segments + 1) * att.block_size
