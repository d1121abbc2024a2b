"""The FAM carries information across blocks, learned from scratch.

A behavioural check of the whole training path (model, FAM recurrence,
gradients through it, famjax's train step): on `benchmarks.digit_carry`'s
dense task (a digit in block 0; in every later block a question whose
answer is that digit) with m = 0 memory segments, a block can only get the
digit through the FAM. `fam` must learn it; `bswa` with the same m = 0 has
no path and must stay near chance (10%).
"""
import numpy as np
import pytest

from benchmarks import digit_carry as dc


def _args(mode):
  return dc.arguments(
      mode=mode, block=8, memory=0, fam_length=2, blocks=4, d_model=32,
      layers=2, heads=2, batch=32, lr=3e-3, dense_steps=250, far_steps=0,
      p_rsp=0.0, rpo=0, seed=0, log_every=1000)


def _dense_accuracy(mode):
  args = _args(mode)
  model = dc.build(args)
  params, curve, _ = dc.train(model, args, log=lambda msg: None)
  toks, w = dc.dense_batch(np.random.RandomState(7), 256, args.blocks,
                           args.block)
  assert w.sum() == 256 * (args.blocks - 1)
  return float(dc.scorer(model)(params, toks, w)), curve


def test_fam_learns_to_carry_a_digit_across_blocks_bswa_cannot():
  fam, curve = _dense_accuracy("fam")
  assert curve[0][2] > 2.0                     # started at chance
  assert fam >= 0.9, fam
  bswa, _ = _dense_accuracy("bswa")
  assert bswa <= 0.3, bswa


def test_far_batch_layout():
  rng = np.random.RandomState(0)
  toks, w = dc.far_batch(rng, 16, 6, 8, depth=0.5)
  for row, weights in zip(toks, w):
    digits = np.flatnonzero(row < 10)
    q = np.flatnonzero(weights)
    assert len(q) == 1 and row[q[0]] == dc.QUESTION
    assert q[0] // 8 == 5                              # the last block
    assert digits.tolist() == [digits[0], q[0] + 1]    # needle, answer
    assert digits[0] // 8 == 2                         # round(0.5 * 4)
    assert row[digits[0]] == row[q[0] + 1]


def test_streams_answer_the_newest_digit_across_pieces():
  """Each question's answer is the newest digit before it in the row's
  stream, looking back across earlier pieces when the row continues; the
  answer is a target only (the input after a question is filler); a row
  that starts anew (continues = 0) gets its digit before its first question
  and is never answered from the stream before."""
  rng = np.random.RandomState(0)
  s = dc.Streams(rng, 6, p_digit=0.2, p_question=0.5, p_reset=0.2)
  newest = [None] * 6
  starts = asked = far = 0
  for _ in range(40):
    toks, w, cont, answers = s.next(4, 8)
    assert toks.shape == (6, 33) and w.shape == answers.shape == (6, 32)
    batch = dc.as_batch(toks, w, cont, answers)
    np.testing.assert_array_equal(batch["fam_continue"], cont)
    for r in range(6):
      if not cont[r]:
        newest[r], starts = None, starts + 1
      row, qs = toks[r], set(np.flatnonzero(w[r]))
      for i in range(32):
        if i in qs:
          assert row[i] == dc.QUESTION and row[i + 1] >= 10   # not shown
          assert newest[r] is not None
          assert batch["decoder_target_tokens"][r, i] == newest[r]
          far += int(all(row[j] >= 10 for j in range(0, i)))  # from before
          asked += 1
        elif row[i] < 10:
          newest[r] = row[i]
  assert starts > 6 and asked > 100 and far > 10      # all cases occur


def test_evaluate_reports_the_fam_state_size():
  """evaluate's FAM state RMS per layer: the rescaled value under
  fam_state_rms, and the plain state's own RMS (a direct forward) without."""
  import jax.numpy as jnp
  from famjax import params_io
  for rms in (0.5, None):
    args = dc.arguments(
        mode="fam", block=8, memory=0, fam_length=2, blocks=2, d_model=32,
        layers=2, heads=2, seed=0, fam_state_rms=rms, eval_mults="1,4",
        eval_samples=4, eval_batch=4)
    model = dc.build(args)
    params = params_io.params_dict(model)
    got = {}
    acc = dc.evaluate(model, params, args, got)
    assert set(got) == set(acc) == {"2", "8"}
    if rms:
      np.testing.assert_allclose(np.array(list(got.values())), rms, rtol=1e-3)
    else:
      rng = np.random.RandomState(1000 + 8)
      phis = []
      for depth in (0.0, 0.5, 1.0):
        toks, _ = dc.far_batch(rng, 4, 8, 8, depth)
        _, aux = model(jnp.asarray(toks[:, :-1]), return_state=True)
        phis.append(np.sqrt((np.asarray(aux["fam_state"]) ** 2).mean((1, 2, 3))))
      np.testing.assert_allclose(got["8"], np.mean(phis, 0), rtol=1e-3)


def test_gap_curriculum_anneals_geometrically():
  vals = [dc.annealed(0.25, 1 / 48, i, 9) for i in range(9)]
  assert vals[0] == 0.25 and abs(vals[-1] - 1 / 48) < 1e-12
  ratios = np.array(vals[1:]) / np.array(vals[:-1])
  np.testing.assert_allclose(ratios, ratios[0])          # geometric
  assert ratios[0] < 1


def test_filler_rows_are_lossless_streams_that_go_on():
  rng = np.random.RandomState(0)
  toks, w = dc.far_batch(rng, 16, 4, 8)
  digit_rows = toks[:12].copy()
  cont = np.zeros(16, np.int32)
  toks, w = dc.filler_rows(rng, toks, w, cont, 4, 0.25, first=True)
  assert (cont == 0).all()                   # the first step starts afresh
  conts = []
  for _ in range(200):
    cont = np.zeros(16, np.int32)
    toks, w = dc.filler_rows(rng, toks, w, cont, 4, 0.25)
    conts.append(cont.copy())
  conts = np.array(conts)
  np.testing.assert_array_equal(toks[:12], digit_rows)   # the task rows
  assert (toks[12:] >= dc.FILLER_LO).all() and (w[12:] == 0).all()
  assert (w[:12].sum(1) == 1).all()
  assert (conts[:, :12] == 0).all()
  assert abs(conts[:, 12:].mean() - 0.75) < 0.05     # fresh with p_reset


# ------------------------------------------- the byte layout and famjax eval
def _positions(ids):
  """(positions of digits, positions of "?") in byte ids (BOS at 0)."""
  ids = np.asarray(ids)
  digits = np.flatnonzero((ids >= ord("0") + 3) & (ids <= ord("9") + 3))
  return digits, np.flatnonzero(ids == ord("?") + 3)


def _check_layout(ids, blocks, block, depth, question_at):
  """A needle in block round(depth * (blocks - 2)) at offset 1..block-1 and
  the question at `question_at`, in the last block at offset 1..block-2."""
  digits, qs = _positions(ids)
  assert ids[0] == 0                                     # BOS
  assert qs.tolist() == [question_at]
  assert question_at // block == blocks - 1
  assert 1 <= question_at % block <= block - 2
  needle = digits[0]
  assert needle // block == int(round(depth * (blocks - 2)))
  assert needle % block >= 1
  assert set(ids.tolist()) <= set(dc.BYTE_OF.tolist()) | {0}
  return needle


def test_eval_task_prompts_have_the_training_layout():
  """`famjax eval`'s digit_carry prompts (BOS + inputs) are laid out as
  --vocab byte trains: the same blocks, offsets, vocabulary; the answer is
  the needle."""
  import seqio
  from famjax.data import eval_tasks
  vocab = seqio.ByteVocabulary()
  for length in (128, 1024):
    for i in range(10):
      ex = eval_tasks.make_example("digit_carry", i, vocab=vocab,
                                   length=length)
      ids = [0] + vocab.encode(ex.inputs)
      needle = _check_layout(np.array(ids), length // 16, 16, ex.depth,
                             len(ids) - 1)
      assert chr(ids[needle] - 3) == ex.targets
  from famjax.data import needles
  with pytest.raises(ValueError, match="byte vocabulary"):
    needles.digit_carry(np.random.RandomState(0),
                        needles.Context(200, lambda s: (len(s) + 1) // 2),
                        depth=0.5)
  rng = np.random.RandomState(0)
  for depth in (0.0, 0.5, 1.0):
    toks, w = dc.byte_layout(*dc.far_batch(rng, 16, 8, 16, depth))
    for row, weights in zip(toks, w):
      q = int(np.flatnonzero(weights)[0])
      needle = _check_layout(row[:q + 1], 8, 16, depth, q)
      assert row[q + 1] == row[needle]                   # the answer


def test_byte_model_famjax_eval_equals_its_own_scores(tmp_path):
  """A byte digit-carry model saved with --model_dir and scored by famjax's
  evaluator (greedy decoding with the streaming decoder) gets, per depth,
  the accuracy of the teacher-forced argmax at each prompt's question."""
  import seqio
  from famjax import evals, params_io
  from famjax.data import eval_tasks
  args = dc.arguments(
      mode="fam", vocab="byte", block=16, memory=0, fam_length=2, blocks=8,
      d_model=32, layers=2, heads=2, batch=16, dense_steps=120, far_steps=0,
      rpo=0, seed=0, log_every=1000, eval_mults="1", eval_samples=8,
      eval_batch=8, model_dir=str(tmp_path / "model"))
  dc.main_with(args)
  model = params_io.build_model(params_io.load_config(args.model_dir),
                                params_io.load_params(args.model_dir))
  n = 20
  got = evals.evaluate_model(model, mixture_or_task_name="digit_carry_byte_128",
                             step=0, output_dir=str(tmp_path / "ev"),
                             batch_size=4, max_examples=n)["digit_carry_byte_128"]
  vocab = seqio.ByteVocabulary()
  correct = dc.scorer(model)
  params = params_io.params_dict(model)
  hits = {}
  for i in range(n):
    ex = eval_tasks.make_example("digit_carry", i, vocab=vocab, length=128)
    ids = np.array([[0] + vocab.encode(ex.inputs) + vocab.encode(ex.targets)])
    w = np.zeros((1, ids.shape[1] - 1), np.float32)
    w[0, -1] = 1.0
    hits.setdefault(ex.depth, []).append(float(correct(params, ids, w)))
  for depth, h in hits.items():
    assert got[f"accuracy@depth={depth:.2f}"] == pytest.approx(
        100 * np.mean(h)), depth
  assert got["accuracy"] == pytest.approx(
      100 * np.mean([x for h in hits.values() for x in h]))


def test_holds_ask_again_for_the_digit_a_row_holds():
  """Holds: a fresh piece is a `far` sequence; a piece that goes on has no
  digit and its question's target is the digit its row holds, written
  pieces earlier; a piece that will go on does not show its answer."""
  rng = np.random.RandomState(0)
  h = dc.Holds(rng, 8, p_hold=0.6)
  written = [None] * 8
  chained = 0
  for i in range(60):
    toks, w, cont, answers = h.next(4 if i % 2 else 3, 8)
    batch = dc.as_batch(toks, w, cont, answers)
    for r in range(8):
      q = int(np.flatnonzero(w[r])[0])
      body = toks[r, :q + 1]
      if cont[r]:
        assert not (body < 10).any()                  # nothing new
        chained += 1
      else:
        digits = np.flatnonzero(body < 10)
        assert len(digits) == 1
        written[r] = body[digits[0]]
      assert batch["decoder_target_tokens"][r, q] == written[r]
      shown = toks[r, q + 1] < 10
      assert shown == (not h.go_on[r])    # hidden when the row goes on
  assert chained > 100


def test_far2_takes_its_lengths_in_turn():
  args = dc.arguments(dense_steps=0, far_steps=0, far2_mix=1, blocks=8,
                      far2_blocks="32,128")
  assert [dc.far2_step(args, s) for s in range(8)] == [
      ("far", 8), ("far2", 32), ("far", 8), ("far2", 128),
      ("far", 8), ("far2", 32), ("far", 8), ("far2", 128)]
  args = dc.arguments(dense_steps=10, far_steps=5, far2_mix=0,
                      far2_blocks="16,64")
  assert [dc.far2_step(args, s)[1] for s in range(15, 19)] == [16, 64, 16, 64]
  with pytest.raises(ValueError, match="far2_blocks"):
    dc.far2_lengths(dc.arguments(far2_blocks="32,0"))


def test_init_model_dir_starts_from_the_saved_weights(tmp_path):
  """--init_model_dir: the model starts from a saved directory's weights
  (not fresh ones of --seed); a mismatched architecture is refused."""
  import jax
  from famjax import params_io
  args = dc.arguments(vocab="byte", block=8, fam_length=2, d_model=32,
                      layers=1, heads=2, seed=3)
  saved = dc.build(args)
  path = str(tmp_path / "m")
  want = jax.tree.map(lambda x: np.asarray(x) * 1.5 + 0.25,
                      params_io.params_dict(saved))  # unlike any fresh init
  params_io.save_model_dir(path, saved.cfg, want)
  fresh = params_io.params_dict(dc.build(dc.arguments(**{**vars(args),
                                                         "seed": 4})))
  args.init_model_dir, args.seed = path, 4
  got = params_io.params_dict(dc.build(args))
  leaves = jax.tree_util.tree_leaves_with_path
  for (k, a), (_, b), (_, c) in zip(leaves(got), leaves(want),
                                    leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(k))
    assert not np.array_equal(np.asarray(a), np.asarray(c)), k
  args.d_model = 64
  with pytest.raises(ValueError, match="d_model"):
    dc.build(args)


def test_lives_write_digits_into_old_filler_states_then_hold_them():
  """Lives: a warm piece is lossless filler; a row that goes on from a warm
  piece either stays warm or wakes into a task piece (one digit, asked in
  the last block); a hold piece has no digit and asks for the held one;
  every piece that goes on follows a piece of its own row."""
  rng = np.random.RandomState(0)
  h = dc.Lives(rng, 8, p_wake=0.3, p_hold=0.4)
  held = [None] * 8
  prev = [None] * 8
  kinds = {"warm": 0, "woke": 0, "hold": 0, "cold": 0}
  for i in range(80):
    toks, w, cont, answers = h.next(4 if i % 2 else 3, 8)
    batch = dc.as_batch(toks, w, cont, answers)
    for r in range(8):
      body = toks[r, :-1]
      digits = np.flatnonzero(body < 10)
      if prev[r] is None:
        assert not cont[r]
      if not w[r].any():                                   # warm
        assert len(digits) == 0 and (toks[r] >= dc.FILLER_LO).all()
        kinds["warm"] += 1
        prev[r], held[r] = "warm", None
        continue
      q = int(np.flatnonzero(w[r])[0])
      assert q >= (toks.shape[1] - 1) - 8                  # the last block
      body = toks[r, :q + 1]                               # to the question
      digits = np.flatnonzero(body < 10)
      if cont[r] and prev[r] == "task" and len(digits) == 0:
        kinds["hold"] += 1                                 # asks again
        assert held[r] is not None
      else:
        assert len(digits) == 1
        held[r] = body[digits[0]]
        if cont[r]:
          assert prev[r] == "warm"
          kinds["woke"] += 1
        else:
          kinds["cold"] += 1
      assert batch["decoder_target_tokens"][r, q] == held[r]
      assert (toks[r, q + 1] < 10) == (not h.go_on[r])
      prev[r] = "task"
  assert min(kinds.values()) > 20, kinds


def test_continued_byte_pieces_have_no_bos():
  toks, w = dc.byte_layout(*dc.far_batch(np.random.RandomState(0), 4, 3, 8))
  out = dc.continued_without_bos(np.random.RandomState(1), toks,
                                 np.array([0, 1, 0, 1]))
  assert (out[[0, 2], 0] == 0).all()                       # BOS: fresh rows
  assert set(out[[1, 3], 0]) <= set(dc.BYTE_OF[dc.FILLER_LO:])
  np.testing.assert_array_equal(out[:, 1:], toks[:, 1:])
