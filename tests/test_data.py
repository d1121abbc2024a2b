"""Data: synthetic generators, vocabularies, seqio tasks, checkpointable iterators."""
import importlib
import json
import os

import numpy as np
import pytest

from famjax.data import pipeline, synthetic, tasks
from famjax.data.pipeline import check_token_ids, make_iterator
from famjax.data.vocab import get_vocabulary

BYTE = get_vocabulary("byte")


def _text(ids):
  return BYTE.decode([int(i) for i in ids if i > 1])


# ------------------------------------------------------------- generators
@pytest.mark.parametrize("name", sorted(synthetic.GENERATORS))
def test_generators_deterministic_and_sized(name):
  gen = synthetic.GENERATORS[name]
  a = gen(7, num_chars=1500, seed=3, split="train")
  assert a == gen(7, num_chars=1500, seed=3, split="train")
  others = [gen(8, num_chars=1500, seed=3), gen(7, num_chars=1500, seed=4),
            gen(7, num_chars=1500, seed=3, split="validation")]
  assert all(o != a for o in others)
  lengths = [len(gen(i, num_chars=1500)["inputs"]) for i in range(20)]
  assert max(lengths) <= 1500 and min(lengths) >= 1500 - 40
  with pytest.raises(ValueError, match="num_chars"):
    gen(0, num_chars=100)


def test_passkey_content():
  depths = []
  for i in range(30):
    ex = synthetic.passkey_example(i, num_chars=3000)
    key = ex["targets"]
    assert len(key) == 5 and key.isdigit()
    assert ex["inputs"].endswith("What is the pass key? The pass key is ")
    assert ex["inputs"].count(f"The pass key is {key}. Remember it.") == 1
    depths.append(ex["inputs"].index(key) / len(ex["inputs"]))
  # The needle is hidden at varied depths (uniform at random).
  assert min(depths) < 0.25 and max(depths) > 0.75


def test_multikey_and_variable_tracking_answers():
  for i in range(10):
    ex = synthetic.multikey_example(i, num_chars=2000)
    word = ex["inputs"].rsplit("magic number for ", 1)[1].split(" ")[0]
    assert f"magic numbers for {word} is: {ex['targets']}." in ex["inputs"]
    ex = synthetic.variable_tracking_example(i, num_chars=2000, num_hops=3)
    names = ex["targets"].split()
    value = ex["inputs"].split("assigned the value ")[1].split()[0]
    assert f"VAR {names[0]} = {value}." in ex["inputs"]
    for a, b in zip(names, names[1:]):
      assert f"VAR {b} = VAR {a}." in ex["inputs"]


# ------------------------------------------------------------ vocabularies
def test_vocabularies(tmp_path):
  assert BYTE.vocab_size == 259
  with pytest.raises(ValueError, match="neither 'byte' nor an existing path"):
    get_vocabulary(str(tmp_path / "missing.model"))
  (tmp_path / "x.txt").write_text("hi")
  with pytest.raises(ValueError, match="not a SentencePiece"):
    get_vocabulary(str(tmp_path / "x.txt"))
  sp = _sentencepiece_model(tmp_path)
  vocab = get_vocabulary(sp)
  ids = vocab.encode("The grass is green.")
  assert vocab.decode(ids) == "The grass is green."


def _sentencepiece_model(tmp_path):
  import sentencepiece as spm
  corpus = tmp_path / "corpus.txt"
  lines = [synthetic.passkey_example(i, num_chars=400)["inputs"]
           for i in range(40)]
  corpus.write_text("\n".join(lines))
  prefix = str(tmp_path / "sp")
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=prefix, vocab_size=100,
      hard_vocab_limit=False,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2)
  return prefix + ".model"


# ------------------------------------------------------------------ tasks
def test_registration_idempotent():
  importlib.reload(tasks)          # re-registers the defaults
  tasks.register_passkey_task("passkey_tiny_eval", "byte", num_eval_examples=5)
  tasks.register_passkey_task("passkey_tiny_eval", "byte", num_eval_examples=5)
  import seqio
  for name in ("passkey_byte", "multikey_byte", "variable_tracking_byte",
               "pylib_lm_byte", "passkey_tiny_eval"):
    assert name in seqio.TaskRegistry.names()


def test_metrics():
  t = seqio_task("passkey_byte")
  assert {f.__name__ for f in t.predict_metric_fns} == {"exact_match"}
  assert {f.__name__ for f in t.score_metric_fns} == {"target_log_likelihood"}
  assert tasks.exact_match(["12345", "11111"], ["12345 ", "11112"]) == {
      "exact_match": 50.0}
  assert tasks.target_log_likelihood(["a", "b"], [-1.0, -3.0]) == {
      "target_log_likelihood": -2.0}
  # famjax eval's scores: [2, n] per example (log-probs; argmax hits), NaN pad
  scores = [np.array([[-0.25, -0.75, np.nan], [1, 0, np.nan]]),
            np.array([[-1.0, -2.0, -0.0], [0, 0, 1]])]
  assert tasks.target_log_likelihood(["a", "b"], scores) == {
      "target_log_likelihood": -2.0}
  assert t.postprocess_fn(b" 12345\n") == "12345"


def seqio_task(name):
  import seqio
  return seqio.get_mixture_or_task(name)


def test_pylib_files_split():
  train, val = tasks.pylib_files("train"), tasks.pylib_files("validation")
  assert len(train) > 50 and len(val) > 3
  assert not set(train) & set(val)
  assert train == sorted(train)


# --------------------------------------------------------------- batches
def test_passkey_batches_prefix_lm():
  it = make_iterator("passkey_byte", "validation", seq_len=384, batch_size=3,
                     shuffle=False)
  b = next(it)
  assert set(b) == {"decoder_input_tokens", "decoder_target_tokens",
                    "decoder_loss_weights"}
  for v in b.values():
    assert v.dtype == np.int32 and v.shape == (3, 384)
  tgt, inp, w = (b["decoder_target_tokens"], b["decoder_input_tokens"],
                 b["decoder_loss_weights"])
  np.testing.assert_array_equal(inp[:, 1:], tgt[:, :-1])   # shifted right
  assert (inp[:, 0] == 0).all()
  for r in range(3):
    ex = synthetic.passkey_example(r, num_chars=384 - 8, split="validation")
    answer = tgt[r][w[r] == 1]
    assert _text(answer) == ex["targets"] and answer[-1] == 1  # key + EOS
    prompt = tgt[r][(w[r] == 0) & (tgt[r] != 0)]
    assert _text(prompt) == ex["inputs"]
    assert len(prompt) + len(answer) <= 384


def test_passkey_task_with_sentencepiece_fills_length(tmp_path):
  sp = get_vocabulary(_sentencepiece_model(tmp_path))
  tasks.register_passkey_task("passkey_sp_test", sp, num_eval_examples=4)
  it = make_iterator("passkey_sp_test", "validation", seq_len=256,
                     batch_size=2, shuffle=False)
  b = next(it)
  for r in range(2):
    w, tgt = b["decoder_loss_weights"][r], b["decoder_target_tokens"][r]
    used = int((tgt != 0).sum())
    assert 200 <= used <= 256           # the prompt fills most of the length
    prompt = sp.decode([int(t) for t in tgt[(w == 0) & (tgt != 0)]])
    answer = sp.decode([int(t) for t in tgt[w == 1] if t != 1])
    assert prompt.endswith("The pass key is")
    assert f"The pass key is {answer}." in prompt


def test_lm_batches_packed_and_unpacked():
  b = next(make_iterator("pylib_lm_byte", "validation", seq_len=64,
                         batch_size=2, shuffle=False))
  assert ((b["decoder_target_tokens"] != 0) == (b["decoder_loss_weights"] == 1)).all()
  first = tasks.pylib_files("validation")[0]
  with open(first, "rb") as fh:
    head = fh.read(64)
  assert bytes(int(t) - 3 for t in b["decoder_target_tokens"][0]) == head
  b = next(make_iterator("pylib_lm_byte", "train", seq_len=64, batch_size=2,
                         pack=True))
  assert {"decoder_positions", "decoder_segment_ids"} <= set(b)
  assert b["decoder_positions"].shape == (2, 64)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(xs, ys):
  return len(xs) == len(ys) and all(
      set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
      for x, y in zip(xs, ys))


@pytest.mark.parametrize("task,seq_len,pack,mode", [
    ("passkey_byte", 320, False, "tf"),
    ("pylib_lm_byte", 48, True, "tf"),
    ("pylib_lm_byte", 48, True, "count"),
])
def test_restored_iterator_continues_exactly(task, seq_len, pack, mode):
  kw = dict(seq_len=seq_len, batch_size=4, seed=5, pack=pack, state_mode=mode)
  it = make_iterator(task, "train", **kw)
  before = _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))     # survives JSON
  assert state["batches_consumed"] == 3 and state["examples_consumed"] == 12
  assert ("tf_iterator" in state) == (mode == "tf")
  # Positions and the shuffle buffer only, not the prefetch / map buffers of
  # tokenized documents (which made it 7.6 MB for pylib_lm_byte).
  assert len(json.dumps(state)) < 256_000
  want = _take(it, 3)
  it2 = make_iterator(task, "train", **kw).set_state(state)
  got = _take(it2, 3)
  assert _same(want, got)
  # Restarting from the beginning would not pass: the stream moves on.
  assert not _same(before, want)
  it2.close()          # the state survives closing the pipeline
  assert _same(_take(it2, 2), _take(it, 2))


def test_restore_with_other_batch_size_skips_examples():
  kw = dict(seq_len=320, seed=1)
  it = make_iterator("passkey_byte", "train", batch_size=4, **kw)
  _take(it, 2)
  state = it.get_state()
  rows = np.concatenate([b["decoder_target_tokens"] for b in _take(it, 2)])
  it2 = make_iterator("passkey_byte", "train", batch_size=2, **kw)
  it2.set_state(state)
  rows2 = np.concatenate([b["decoder_target_tokens"] for b in _take(it2, 4)])
  np.testing.assert_array_equal(rows, rows2)


def test_set_state_rejects_other_pipeline():
  it = make_iterator("pylib_lm_byte", "train", seq_len=32, batch_size=2,
                     state_mode="count")
  state = it.get_state()
  other = make_iterator("pylib_lm_byte", "train", seq_len=64, batch_size=2)
  with pytest.raises(ValueError, match="seq_len=32"):
    other.set_state(state)
  with pytest.raises(ValueError, match="not a famjax data iterator state"):
    other.set_state({"step": 3})


def test_shards_split_the_examples():
  kw = dict(seq_len=320, shuffle=False)
  whole = next(make_iterator("passkey_byte", "validation", batch_size=4, **kw))
  parts = [next(make_iterator("passkey_byte", "validation", batch_size=4,
                              shard_index=i, num_shards=2, **kw))
           for i in range(2)]
  for i in range(2):
    assert parts[i]["decoder_target_tokens"].shape == (2, 320)
    np.testing.assert_array_equal(parts[i]["decoder_target_tokens"],
                                  whole["decoder_target_tokens"][i::2])
  with pytest.raises(ValueError, match="divisible by num_shards"):
    make_iterator("passkey_byte", "train", seq_len=320, batch_size=3,
                  num_shards=2)


def test_finite_epoch_pads_last_batch():
  tasks.register_passkey_task("passkey_tiny_eval", "byte", num_eval_examples=5)
  it = make_iterator("passkey_tiny_eval", "validation", seq_len=320,
                     batch_size=2, shuffle=False, num_epochs=1)
  batches = list(it)
  assert len(batches) == 3
  last = batches[-1]
  assert last["decoder_target_tokens"].shape == (2, 320)
  assert last["decoder_loss_weights"][0].sum() > 0
  assert not last["decoder_loss_weights"][1].any()
  assert not last["decoder_target_tokens"][1].any()


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown seqio task"):
    make_iterator("no_such_task", "train", seq_len=32, batch_size=2)
  with pytest.raises(ValueError, match="no split 'test'"):
    make_iterator("passkey_byte", "test", seq_len=320, batch_size=2)
  with pytest.raises(ValueError, match="too short"):
    next(make_iterator("passkey_byte", "train", seq_len=64, batch_size=2))


def test_check_token_ids():
  batch = {"decoder_input_tokens": np.array([[0, 5, 258]]),
           "decoder_target_tokens": np.array([[5, 258, 1]]),
           "decoder_loss_weights": np.array([[1, 1, 1000]])}
  check_token_ids(batch, 259)
  with pytest.raises(ValueError, match="'decoder_input_tokens' holds token id 258"):
    check_token_ids(batch, 256)
  with pytest.raises(ValueError, match="decoder_target_tokens.*-1"):
    check_token_ids({"decoder_target_tokens": np.array([[-1, 3]])}, 256)
