"""benchmarks/graft_finetune.py (Experiment 2's fine-tune and its scoring)
and the memory-answer loss weights of the PassKey stage 3b."""
import json
import math
import os

import numpy as np
import pytest

from benchmarks import graft_finetune as gf
from famjax.data import loss_weights

# Pieces as token ids: filler 100-104, needle parts 200.., question 300..,
# digits 10-19, answer end 400 (no id appears in two pieces).
PIECES = {"filler": [100, 101, 102, 103, 104],
          "needle": [[200, 201], [202], [203, 204]],
          "question": [300, 301, 302],
          "answer_end": [400],
          "digits": [[10 + d] for d in range(10)]}


def _find(seq, sub):
  return [i for i in range(len(seq) - len(sub) + 1)
          if list(seq[i:i + len(sub)]) == list(sub)]


@pytest.mark.parametrize("length", [64, 203])
def test_passkey_prompt_layout(length):
  key = "40719"
  dig = [10 + int(c) for c in key]
  starts = []
  for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
    ids, pos = gf.passkey_prompt(PIECES, length, depth, key)
    assert ids.shape == (length,)
    np.testing.assert_array_equal(pos, np.arange(length - 5, length))
    assert list(ids[pos]) == dig                       # the answer ends it
    assert list(ids[pos[0] - 3:pos[0]]) == PIECES["question"]
    needle = [200, 201] + dig + [202] + dig + [203, 204]
    hits = _find(ids, needle)
    assert len(hits) == 1
    starts.append(hits[0])
    # only filler elsewhere
    rest = np.delete(ids, list(range(hits[0], hits[0] + len(needle))) +
                     list(range(length - 8, length)))
    assert set(rest.tolist()) <= set(PIECES["filler"])
  assert starts[0] == 0 and starts == sorted(starts)
  assert starts[-1] >= length - 8 - len(needle) - len(PIECES["filler"])


def test_passkey_train_row_weights_only_answers_after_the_needle():
  rng = np.random.RandomState(3)
  for _ in range(5):
    ids, w = gf.passkey_train_row(PIECES, 400, rng, asks=4)
    assert ids.shape == w.shape == (400,)
    needle_at = _find(ids, [200, 201])[0]
    key = ids[needle_at + 2:needle_at + 7]
    weighted = np.flatnonzero(w)
    assert len(weighted) and len(weighted) % 5 == 0 and set(w[weighted]) == {1.0}
    assert weighted.min() > needle_at + 7
    for start in weighted[::5]:
      assert list(ids[start - 3:start]) == PIECES["question"]
      np.testing.assert_array_equal(ids[start:start + 5], key)


def test_evaluate_buckets_and_passkey_against_a_naive_count():
  class Args:
    eval_batch, bucket = 2, 4
  rng = np.random.RandomState(0)
  nll = rng.uniform(0.5, 3.0, (3, 12)).astype(np.float32)
  ok = np.zeros((3, 12), bool)
  ok[2, 6:10] = True                 # predicts tokens 7..10 of prompt 2
  info = [{"kind": "text", "window": 0}, {"kind": "text", "window": 1},
          {"kind": "passkey", "length": 11, "depth": 0.5, "key": "1",
           "answer": [7, 8, 9, 10]}]
  calls = []

  def fn(params, seqs):
    calls.append(len(seqs))
    i = sum(calls[:-1])
    return nll[i:i + len(seqs)], ok[i:i + len(seqs)]

  out = gf.evaluate(fn, None, np.zeros((3, 13)), info, Args)
  assert calls == [2, 1]
  for a in range(0, 12, 4):
    want = math.exp(float(np.mean([nll[r, t] for r in (0, 1)
                                   for t in range(a, a + 4)])))
    assert out["ppl_buckets"][f"{a}-{a + 4}"] == pytest.approx(want, rel=1e-6)
  assert out["passkey"][0]["ok"] and out["passkey_by_length"] == {"11": 1.0}
  ok[2, 9] = False
  calls.clear()
  out = gf.evaluate(fn, None, np.zeros((3, 13)), info, Args)
  assert not out["passkey"][0]["ok"] and out["passkey"][0]["digits_ok"] == 3


def test_run_random_weights_matches_a_plain_forward(tmp_path):
  """The run's zero-shot text perplexity equals exp(mean NLL) of the same
  model's plain forward on the same windows; training writes its record."""
  import jax
  from flax import nnx
  from famjax.model import Transformer
  data = tmp_path / "data"
  data.mkdir()
  rng = np.random.RandomState(1)
  np.save(data / "train.npy", rng.randint(0, 49152, 20000).astype(np.uint16))
  np.save(data / "heldout.npy", rng.randint(0, 49152, 700).astype(np.uint16))
  cfg = {"vocab_size": 49152, "d_model": 576, "num_layers": 30,
         "num_heads": 9, "num_kv_heads": 3, "head_dim": 64, "ffn_dim": 1536,
         "tie_embeddings": True, "rope_theta": 100000.0}
  meta = {"tokens": {}, "eos": 0, "pieces": PIECES, "model_config": cfg}
  (data / "meta.json").write_text(json.dumps(meta))
  def tiny_run(out, *flags):
    gf.main(["run", "--data", str(data), "--out", str(out),
             "--random_weights", "--tiny", "--steps", "2", "--seq_len", "64",
             "--batch", "4", "--microbatches", "2", "--block", "32",
             "--eval_len", "256", "--lora_rank", "4", "--dtype", "float32",
             "--passkey_frac", "0.5", *flags])

  out = tmp_path / "out"
  tiny_run(out, "--modes", "bswa", "--eval_windows", "2", "--bucket", "64",
           "--passkey_lengths", "128,256", "--passkey_depths", "0,1")
  res = json.loads((out / "graft_finetune.json").read_text())
  rec = res["modes"]["bswa"]
  assert rec["train"]["steps"] == 2
  assert [s for s, _, _ in rec["train"]["losses"]] == [0, 1]   # first, last
  assert len(rec["before"]["passkey"]) == 4 and "after" in rec
  args = gf.main.__globals__["argparse"].Namespace(
      random_weights=True, tiny=True, block=32, memory=1, fam_length=64,
      impl="auto", lora_rank=4, dtype="float32", remat="none")
  model = Transformer(gf.model_config(cfg, "bswa", args), rngs=nnx.Rngs(0))
  held = np.load(data / "heldout.npy").astype(np.int32)
  rows = np.stack([held[:257], held[256:513]])
  logits = np.asarray(model(jax.numpy.asarray(rows[:, :-1])), np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + \
      logits.max(-1)
  nll = lse - np.take_along_axis(logits, rows[:, 1:, None], -1)[..., 0]
  assert rec["before"]["ppl_all"] == pytest.approx(math.exp(nll.mean()),
                                                   rel=1e-4)
  assert rec["before"]["ppl_buckets"]["64-128"] == pytest.approx(
      math.exp(nll[:, 64:128].mean()), rel=1e-4)
  # fam, each text row reading on through the books from its own state.
  out2 = tmp_path / "out_fam"
  tiny_run(out2, "--modes", "fam", "--fam_length", "8", "--eval_windows",
           "1", "--passkey_lengths", "128", "--passkey_depths", "0",
           "--state_passing", "rows", "--p_rsp", "0")
  fam = json.loads((out2 / "graft_finetune.json").read_text())["modes"]["fam"]
  assert fam["train"]["step_config"]["state_passing"] == "rows"
  assert all(math.isfinite(l) for _, l, _ in fam["train"]["losses"])
  gf.main(["report", "--results", str(out / "graft_finetune.json"),
           "--results", str(out2 / "graft_finetune.json"),
           "--out", str(out / "report.md")])
  table = (out / "report.md").read_text()
  assert "| bswa 2 steps | after |" in table
  assert "| fam 2 steps, RSP 0 | after |" in table
  assert os.path.exists(out / "report_ppl.png")
  assert os.path.exists(out / "report_ratio.png")       # fam against bswa


def test_memory_answers_against_a_loop():
  rng = np.random.RandomState(0)
  digits = (5, 6, 7)
  targets = rng.choice([1, 2, 3, 5, 6, 7], size=(3, 50), p=[.3, .3, .28, .04,
                                                             .04, .04])
  inputs = np.concatenate([np.zeros((3, 1), int), targets[:, :-1]], 1)
  got = loss_weights.memory_answers(inputs, targets, 8, digits)
  for r in range(3):
    for t in range(50):
      blk = t // 8 * 8
      want = (targets[r, t] in digits and
              not any(x in digits for x in inputs[r, blk:t + 1]) and
              any(x in digits for x in inputs[r, :t + 1]))
      assert got[r, t] == want, (r, t)
  batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_loss_weights": np.ones((3, 50), np.float32)}
  w = loss_weights.memory_reweight(batch, 8, digits, 1.0, 0.1, 0.01)[
      "decoder_loss_weights"]
  np.testing.assert_array_equal(w == 1.0, got)
  np.testing.assert_array_equal(np.isclose(w, 0.1),
                                np.isin(targets, digits) & ~got)


def test_train_batch_rows_read_on_through_the_stream():
  """--state_passing rows: a text row's next piece starts at the token
  after its last input (fam_continue 1), or elsewhere with fam_continue 0;
  PassKey rows never continue; without cursors there is no such field."""
  import argparse
  args = argparse.Namespace(seed=0, seq_len=16, batch=4, passkey_frac=0.25,
                            passkey_asks=2, passkey_weight=20.0,
                            stream_reset=0.3)
  stream = np.arange(1000, 1400, dtype=np.int32)  # token = 1000 + position
  assert "fam_continue" not in gf.train_batch(stream, PIECES, 0, args)
  cursors = [None] * 4
  prev = None
  seen = {0: 0, 1: 0}
  for step in range(30):
    b = gf.train_batch(stream, PIECES, step, args, cursors)
    x, y, c = (b["decoder_input_tokens"], b["decoder_target_tokens"],
               b["fam_continue"])
    assert x.shape == y.shape == (4, 16)
    np.testing.assert_array_equal(x[:3, 1:], y[:3, :-1])     # one window
    assert np.all(np.diff(x[:3], axis=1) == 1)
    assert c[3] == 0 and x[3].max() < 1000                  # a PassKey row
    for r in range(3):
      if step == 0:
        assert c[r] == 0
      if c[r]:
        assert x[r, 0] == prev[r, -1] + 1                    # reads on
      seen[int(c[r])] += 1
    prev = x
  assert seen[0] >= 5 and seen[1] >= 30
