"""famjax.evals: predictions vs the whole-sequence forward, scores vs a
direct log-softmax, `famjax eval` end to end, reruns, errors, 2 processes."""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from famjax.evals import infer
from tests import evaluator_fixtures as fx
from tests.helpers import jit_forward, perturbed_model, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EOS = 1


def model_dataset(rows, length):
  """Enumerated dataset of prefix-LM model features (the feature converter's
  layout): inputs = [0] + seq[:-1], weights 1 on the targets."""
  feats = {k: [] for k in (infer.INPUTS, infer.TARGETS, infer.WEIGHTS)}
  for prompt, target in rows:
    seq = list(prompt) + list(target)
    pad = length - len(seq)
    feats[infer.TARGETS].append(seq + [0] * pad)
    feats[infer.INPUTS].append([0] + seq[:-1] + [0] * pad)
    feats[infer.WEIGHTS].append([0] * len(prompt) + [1] * len(target) +
                                [0] * pad)
  ds = tf.data.Dataset.from_tensor_slices(
      {k: np.asarray(v, np.int32) for k, v in feats.items()})
  return ds.enumerate()


def ragged_rows(seed=0):
  """Prompts of 5, 9 and 13 tokens (+ BOS: across block boundaries of 4),
  two of each, in one dataset; targets of 1..4 tokens, ids in [2, 40)."""
  rng = np.random.default_rng(seed)
  lens = [(9, 2), (5, 4), (13, 1), (5, 3), (9, 4), (13, 2)]
  return [(rng.integers(2, 40, p).tolist(), rng.integers(2, 40, t).tolist())
          for p, t in lens]


def padded(seq, length=24):
  """[1, length] (trailing zeros do not change the causal logits before)."""
  return np.asarray([seq + [0] * (length - len(seq))], np.int32)


@pytest.mark.parametrize("mode", ["full", "bswa", "fam"])
def test_predict_equals_teacher_forced_argmax(mode):
  model = perturbed_model(tiny_config(mode, block=4, m=1, f=2))
  forward = jit_forward(model)
  rows = ragged_rows()
  runner = infer.Runner(model, batch_size=2)
  n = max(len(t) for _, t in rows)
  ds = model_dataset(rows, 20)
  out, aux = runner.predict(ds, eos_id=EOS, with_aux=True)
  assert [i for i, _ in out] == list(range(len(rows)))
  # Again with EOS = example 0's first token: every row stops at its first
  # occurrence, zeros after it.
  eos2 = int(out[0][1][0])
  out2 = runner.predict(ds, eos_id=eos2)
  assert out2[0][1][0] == eos2 and not out2[0][1][1:].any()
  for eos, res in ((EOS, out), (eos2, out2)):
    for (i, toks), (prompt, _) in zip(res, rows):
      assert toks.shape == (n,)
      hit = np.flatnonzero(toks == eos)
      k = int(hit[0]) + 1 if hit.size else n      # generated tokens
      assert not toks[k:].any()
      seq = [0] + prompt + toks[:k].tolist()
      logits = np.asarray(forward(padded(seq)), np.float64)[0]
      p = len(prompt) + 1
      np.testing.assert_array_equal(toks[:k], logits[p - 1:p - 1 + k].argmax(-1))
      if eos == EOS:
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        want = sum(logp[p - 1 + j, toks[j]] for j in range(k))
        assert abs(aux["scores"][i] - want) < 1e-4 * max(1.0, abs(want))
        assert aux["prompt_length"][i] == p


def test_score_equals_direct_log_softmax():
  model = perturbed_model(tiny_config("fam", block=4, m=1, f=2))
  forward = jit_forward(model)
  rows = ragged_rows(seed=1)
  got = infer.Runner(model, batch_size=3).score(model_dataset(rows, 20))
  assert [i for i, _ in got] == list(range(len(rows)))
  for (_, s), (prompt, target) in zip(got, rows):
    seq = [0] + prompt + target
    logits = np.asarray(forward(padded(seq[:-1])), np.float64)[0]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    pos = np.arange(len(prompt), len(seq) - 1)
    assert s.shape == (2, len(target)) and s.dtype == np.float32
    np.testing.assert_allclose(s[0], logp[pos, target], atol=1e-4)
    np.testing.assert_array_equal(s[1], logits[pos].argmax(-1) == target)


# ---------------------------------------------------------------- the CLI
def cli(args, capsys):
  from famjax.evals import main
  code = main.main(args)
  out, err = capsys.readouterr()
  return code, out, err


def gin_args(model_dir, name="evtest_needle_byte", *extra):
  return [f"--gin_file={ROOT}/gin/runs/eval.gin",
          f"--gin_file={HERE}/evaluator_fixtures.gin",
          f"--gin.MODEL_DIR={model_dir}",
          f"--gin.MIXTURE_OR_TASK_NAME={name}", "--gin.eval.batch_size=4",
          *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return fx.make_run_dir(str(tmp_path_factory.mktemp("ev") / "run"),
                         fx.tiny_cfg("fam"))


@pytest.fixture(scope="module")
def first_eval(run_dir):
  """`famjax eval` of the run's latest checkpoint (step 2), one process."""
  from famjax.evals import main
  assert main.main(gin_args(run_dir)) == 0
  return os.path.join(run_dir, "evals", "evtest_needle_byte")


def tensorboard_scalars(out_dir):
  vals = {}
  for path in glob.glob(os.path.join(out_dir, "tensorboard", "events.*")):
    for ev in tf.compat.v1.train.summary_iterator(path):
      for v in ev.summary.value:
        vals[(v.tag, ev.step)] = float(tf.make_ndarray(v.tensor)) if (
            v.HasField("tensor")) else v.simple_value
  return vals


def test_eval_cli_end_to_end(first_eval):
  from famjax import params_io
  from famjax.decode import generate
  with open(os.path.join(first_eval, "results.json")) as fh:
    res = json.load(fh)
  assert list(res["steps"]) == ["2"]             # 'latest' of steps 1, 2
  metrics = res["steps"]["2"]
  assert sorted(metrics) == sorted(fx.TASKS)
  # An independent model (the fixture's step-2 weights) and paths: decode.
  # generate for predictions, a whole forward + log-softmax for the scores.
  cfg = fx.tiny_cfg("fam")
  model = params_io.build_model(cfg, fx.random_params(cfg, 2))
  vocab = __import__("seqio").ByteVocabulary()
  forward = jit_forward(model)
  tb = tensorboard_scalars(first_eval)
  for task, length in zip(fx.TASKS, fx.LENGTHS):
    m = metrics[task]
    for d in fx.DEPTHS:
      assert f"accuracy@depth={d:.2f}" in m
    rows = [fx.needle_example(i, length) for i in range(fx.NUM_EXAMPLES)]
    n = max(len(vocab.encode(key)) + 1 for _, key, _ in rows)
    lls = []
    for text, key, _ in rows:
      prompt = [0] + vocab.encode(text)
      target = vocab.encode(key) + [1]
      logits = np.asarray(forward(padded(prompt + target[:-1], 128)),
                          np.float64)[0, len(prompt) - 1:][:len(target)]
      logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
      lls.append(logp[np.arange(len(target)), target].sum())
    with open(os.path.join(first_eval, "json", f"{task}-2.jsonl")) as fh:
      logged = [json.loads(l)["prediction"] for l in fh]
    for (text, key, _), pred in list(zip(rows, logged))[:2]:
      prompt = np.asarray([[0] + vocab.encode(text)], np.int32)
      want = vocab.decode(np.asarray(generate(model, prompt, n, eos_id=1))[
          0].tolist()).strip()
      assert pred == want
    hits = [p == key for (_, key, _), p in zip(rows, logged)]
    assert abs(m["log_likelihood"] - np.mean(lls)) < 1e-3
    assert m["accuracy"] == pytest.approx(100 * np.mean(hits))
    assert tb[(f"{task}/log_likelihood", 2)] == pytest.approx(
        m["log_likelihood"], abs=1e-4)
    with open(os.path.join(first_eval, "json", f"{task}.jsonl")) as fh:
      assert [json.loads(l)["step"] for l in fh] == [2]
  with open(os.path.join(first_eval, "heatmap_evtest_needle_step2.png"),
            "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(first_eval, "ruler_step2.md")) as fh:
    table = fh.read()
  assert table.splitlines()[0] == "| task | metric | 48 | 80 | mean |"
  row = [l for l in table.splitlines() if l.startswith("| evtest_needle |")]
  acc = [metrics[t]["accuracy"] for t in fx.TASKS]
  assert row == [f"| evtest_needle | accuracy | {acc[0]:.2f} | {acc[1]:.2f} "
                 f"| {np.mean(acc):.2f} |"]


def test_eval_rerun_skips_evaluated_steps(run_dir, first_eval, capsys):
  code, out, _ = cli(gin_args(run_dir, "evtest_needle_byte",
                              "--gin.eval.checkpoint_steps=[1, 2]"), capsys)
  assert code == 0
  assert "steps [2] already evaluated" in out
  with open(os.path.join(first_eval, "results.json")) as fh:
    steps = json.load(fh)["steps"]
  assert sorted(steps) == ["1", "2"]
  assert steps["1"] != steps["2"]                 # different weights
  with open(os.path.join(first_eval, "json", f"{fx.TASKS[0]}.jsonl")) as fh:
    assert [json.loads(l)["step"] for l in fh] == [2, 1]


def test_evaluate_model_in_memory_equals_cli(first_eval, tmp_path):
  """The trainer's entry point on an in-memory model: the same metrics as
  `famjax eval` of the checkpoint holding the same weights, same files."""
  from famjax import evals, params_io
  cfg = fx.tiny_cfg("fam")
  model = params_io.build_model(cfg, fx.random_params(cfg, 2))
  out = str(tmp_path / "in_training")
  got = evals.evaluate_model(model, mixture_or_task_name="evtest_needle_byte",
                             step=7, output_dir=out, batch_size=4)
  with open(os.path.join(first_eval, "results.json")) as fh:
    want = json.load(fh)["steps"]["2"]
  assert sorted(got) == sorted(want)
  for task in want:
    for k, v in want[task].items():
      assert got[task][k] == pytest.approx(v, abs=1e-4), (task, k)
  with open(os.path.join(out, "results.json")) as fh:
    assert list(json.load(fh)["steps"]) == ["7"]
  assert os.path.isfile(os.path.join(out, "heatmap_evtest_needle_step7.png"))
  assert glob.glob(os.path.join(out, "tensorboard", "events.*"))


def one_error_line(code, err):
  assert code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("famjax eval: error: "), err
  return lines[0]


def test_eval_errors(run_dir, tmp_path, capsys):
  from famjax import params_io
  line = one_error_line(*cli(gin_args(run_dir, "evtest_needle_bite"),
                             capsys)[::2])
  assert "'evtest_needle_bite'" in line and "evtest_needle_byte" in line
  line = one_error_line(*cli(gin_args(str(tmp_path / "nope")), capsys)[::2])
  assert "does not exist" in line
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "notes.txt").write_text("x")
  line = one_error_line(*cli(gin_args(str(tmp_path / "junk")), capsys)[::2])
  assert "is not a model" in line
  line = one_error_line(*cli(gin_args(run_dir, "evtest_needle_byte",
                                      "--gin.eval.checkpoint_steps=[3]"),
                             capsys)[::2])
  assert "no checkpoint [3]" in line
  # A full-attention model made for 64 positions and tasks of 48 / 80.
  cfg = fx.tiny_cfg("full")
  full = params_io.save_model_dir(
      str(tmp_path / "full"), cfg, fx.random_params(cfg, 0),
      extra_files={"hf_config.json": b'{"max_position_embeddings": 64}'})
  line = one_error_line(*cli(gin_args(full), capsys)[::2])
  assert "position limit of 64" in line and fx.TASKS[1] in line
  assert not os.path.exists(os.path.join(full, "evals"))  # nothing written


def test_two_process_eval_equals_one_process(run_dir, first_eval, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  out = str(tmp_path / "mh")
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               FAMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               FAMJAX_NUM_PROCESSES="2", FAMJAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "famjax.cli", "eval", *gin_args(run_dir),
         "--gin.eval.multi_host=True", f"--gin.eval.output_dir={out}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  logs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(
      l[-3000:] for l in logs)
  with open(os.path.join(out, "results.json")) as fh:
    two = json.load(fh)["steps"]["2"]
  with open(os.path.join(first_eval, "results.json")) as fh:
    one = json.load(fh)["steps"]["2"]
  assert sorted(two) == sorted(one)
  for task in one:
    assert sorted(two[task]) == sorted(one[task])
    for k, v in one[task].items():
      assert two[task][k] == pytest.approx(v, abs=1e-4), (task, k)
  assert "famjax eval: step 2 done" in logs[0]       # process 0 reports
  assert "famjax eval: step 2 done" not in logs[1]   # process 1 does not


def test_byte_suite_task_beyond_its_family_lengths_by_name():
  """A byte model directory has no tokenizer of its own; a digit_carry task
  past the family's registered lengths is still found by its name, at that
  length, and a misspelt one is still an error."""
  import seqio
  from famjax.data import eval_info
  from famjax.errors import UserError
  from famjax.evals import evaluator
  task = evaluator.get_task("digit_carry_byte_24k")
  assert task.name == "digit_carry_byte_24k"
  assert eval_info.TASK_INFO[task.name]["length"] == 24 * 1024
  assert "digit_carry_byte_24k" not in [
      t.name for t in seqio.get_mixture_or_task("digit_carry_byte").tasks]
  with pytest.raises(UserError, match="unknown task"):
    evaluator.get_task("digit_cary_byte_24k")


def test_plots_merge_runs_into_one_heatmap_and_table(tmp_path):
  """python -m famjax.evals.plots: two eval runs' results.json (a mixture's
  lengths and one asked by name) make one table and one heatmap; every
  cell is its run's number."""
  from famjax.evals import plots
  runs = {"a": {"digit_carry_byte_128": 100.0, "digit_carry_byte_8k": 90.0},
          "b": {"digit_carry_byte_64k": 55.0}}
  paths = []
  for name, tasks in runs.items():
    steps = {"0": {t: {"accuracy": v, "accuracy@depth=0.00": v,
                       "accuracy@depth=1.00": 100.0 - v}
                   for t, v in tasks.items()}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"steps": steps}))
    paths.append(str(path))
  assert plots.main([str(tmp_path / "out")] + paths) == 0
  table = (tmp_path / "out" / "ruler_step0.md").read_text().splitlines()
  assert table[0] == "| task | metric | 128 | 8k | 64k | mean |"
  assert table[2] == ("| digit_carry | accuracy | 100.00 | 90.00 | 55.00 | "
                      "81.67 |")
  assert (tmp_path / "out" / "heatmap_digit_carry_step0.png").stat().st_size
  metrics, info = plots.merge_results(paths)
  assert info["digit_carry_byte_64k"] == {"family": "digit_carry",
                                          "length": 65536}
  assert plots.grid(metrics, info)["digit_carry"][(1.0, 65536)] == 45.0
  with pytest.raises(ValueError, match="no step 3"):
    plots.merge_results(paths, "3")
