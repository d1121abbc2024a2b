"""benchmarks/passkey_lengths.py scores by teacher forcing; its exact match
must equal greedy decoding (famjax.decode.generate, the streaming path)."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from benchmarks import passkey_lengths as pl
from famjax.config import AttentionConfig, ModelConfig
from famjax.decode import generate
from famjax.model import Transformer


def _model(mode):
  att = AttentionConfig(mode=mode, block_size=16, memory_segments=0,
                        fam_length=4)
  cfg = ModelConfig(vocab_size=259, d_model=32, num_layers=2, num_heads=2,
                    ffn_dim=64, attention=att)
  return Transformer(cfg, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("mode", ["fam"])
def test_teacher_forced_hits_equal_greedy_decoding(mode):
  model = _model(mode)
  forward = pl.make_forward(model)
  # Two prompts of different lengths in one batch (right padding).
  prompts = [pl.byte_ids(pl.passkey_prompt(n, d, "31415"))
             for n, d in ((300, 0.0), (291, 1.0))]
  assert len(prompts[0]) != len(prompts[1])
  greedy = [np.asarray(generate(model, np.asarray([p]), 5))[0].tolist()
            for p in prompts]
  # The model's own greedy answer is an exact match ...
  hits = pl.score_batch(forward, prompts, greedy)
  assert hits.all()
  # ... and changing one token of it breaks the match exactly there.
  wrong = [list(g) for g in greedy]
  for w in wrong:
    w[2] = (w[2] + 1) % 259
  hits = pl.score_batch(forward, prompts, wrong)
  assert hits[:, :2].all() and not hits[:, 2].any()


def test_prompt_places_needle_at_depth():
  first = pl.passkey_prompt(600, 0.0, "12345")
  last = pl.passkey_prompt(600, 1.0, "12345")
  assert len(first) <= 600 and len(first) == len(last)
  needle = "The pass key is 12345."
  assert first.index(needle) == len(pl.synthetic.INTRO)
  assert last.endswith(needle + " Remember it. 12345 is the pass key. "
                       + pl.synthetic.PASSKEY_QUESTION)
