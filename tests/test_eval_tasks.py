"""The long-context eval suite: answers where recorded, depths, token
budgets (byte and BPE), determinism, book preparation, TFDS tasks."""
import collections
import os
import re

import numpy as np
import pytest
import seqio

from famjax.data import babi, books, eval_info, eval_tasks, lm_tasks, needles
from famjax.data import tasks  # noqa: F401  (registers the byte suite)
from tests import eval_fixtures as fx

BYTE = seqio.ByteVocabulary()
PREDICT = sorted(eval_tasks.FAMILIES)


@pytest.fixture(scope="module")
def books_dir(tmp_path_factory):
  return fx.write_books(str(tmp_path_factory.mktemp("books")))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, books_dir):
  from famjax.data.vocab import get_vocabulary
  text = "".join(t for _, t in books.load_books(books_dir))[:60000]
  text += " The pass key is 12345. VAR ABCDE = VAR FGHIJ. magic numbers"
  path = fx.write_bpe_tokenizer(str(tmp_path_factory.mktemp("bpe")), text)
  return get_vocabulary(path)


def _ex(family, i, books_dir, vocab=BYTE, length=2048, seed=0):
  return eval_tasks.make_example(family, i, vocab=vocab, length=length,
                                 seed=seed, books_path=books_dir)


# ------------------------------------------------- answers and determinism
@pytest.mark.parametrize("family", PREDICT)
def test_answers_in_context_and_deterministic(family, books_dir):
  for i in range(3):
    ex = _ex(family, i, books_dir)
    assert ex == _ex(family, i, books_dir)
    assert ex.inputs != _ex(family, i, books_dir, seed=1).inputs
    assert ex.targets and ex.answers
    if family in ("cwe", "fwe"):
      continue  # answers are counted below, not quoted
    for a in ex.answers:
      assert a in ex.inputs
  assert _ex(family, 0, books_dir).inputs != _ex(family, 1, books_dir).inputs


def _body_fraction(text, needle, start, end):
  pos = text.index(needle)
  return (pos - start) / (end - start - len(needle))


@pytest.mark.parametrize("family", ["passkey", "niah_single_noise",
                                    "niah_single_book", "niah_multikey"])
def test_needle_depth_is_where_recorded(family, books_dir):
  seen = set()
  for i in range(5):
    ex = _ex(family, i, books_dir, length=8192)
    assert ex.inputs.count(ex.needle) == 1 and ex.answers[0] in ex.needle
    start = ex.inputs.index("\n") + 1        # after the instruction line
    end = (ex.inputs.rindex("What is the pass key?") if family == "passkey"
           else ex.inputs.rindex("\n"))      # before the question
    frac = _body_fraction(ex.inputs, ex.needle, start, end)
    longest = max(len(s) for s in re.split(r"(?<=\. )", ex.inputs[start:end]))
    assert abs(frac - ex.depth) <= 0.01 + longest / (end - start), (frac, ex)
    seen.add(ex.depth)
  assert seen == set(eval_tasks.DEFAULT_DEPTHS)


def test_multi_needle_answers_belong_to_asked_keys(books_dir):
  for family in ("niah_multikey", "niah_multivalue", "niah_multiquery"):
    ex = _ex(family, 2, books_dir)
    q = ex.inputs.rsplit("\n", 1)[1]
    keys = re.findall(r"[a-z]+-[a-z]+", q.split("?")[0])
    pairs = re.findall(r"magic numbers for ([a-z]+-[a-z]+) is: (\d+)\.",
                       ex.inputs)
    want = [v for k in dict.fromkeys(keys) for kk, v in pairs if kk == k]
    assert sorted(want) == sorted(ex.answers)
    assert len(pairs) == 4 and len(ex.answers) == (1 if family ==
                                                    "niah_multikey" else 4)


def test_variable_tracking_chain(books_dir):
  ex = _ex("vt", 4, books_dir)
  value = re.search(r"assigned the value (\d+)", ex.inputs).group(1)
  holds = {a for a, v in re.findall(r"VAR (\w+) = (\d+)\.", ex.inputs)
           if v == value}
  links = re.findall(r"VAR (\w+) = VAR (\w+)\.", ex.inputs)
  for _ in links:
    holds |= {a for a, b in links if b in holds}
  assert holds == set(ex.answers) and len(holds) == 5


def test_common_and_frequent_words_by_counting(books_dir):
  ex = _ex("cwe", 1, books_dir, length=4096)
  words = re.findall(r"\d+\. ([a-z]+)", ex.inputs.split("\nQuestion")[0])
  counts = collections.Counter(words).most_common()
  assert {w for w, _ in counts[:10]} == set(ex.answers)
  assert counts[9][1] > counts[10][1]
  ex = _ex("fwe", 1, books_dir, length=4096)
  body = ex.inputs.split("coded words. ", 1)[1].split("\nQuestion")[0]
  counts = collections.Counter(w for w in body.split() if w != "....")
  top = counts.most_common()
  assert [w for w, _ in top[:3]] == ex.answers and top[2][1] > top[3][1]


def _simulate(facts, question):
  """An independent reading of the bAbI facts."""
  at, holder, path = {}, {}, collections.defaultdict(list)

  def moved(o, place):
    if not path[o] or path[o][-1] != place:
      path[o].append(place)
  for f in facts:
    w = f.rstrip(".").split()
    person, thing = w[0], w[-1]
    if " to the " in f:
      at[person] = thing
      for o, h in holder.items():
        if h == person:
          moved(o, thing)
    elif any(v in f for v in ("picked up", "got", "grabbed", "took")):
      holder[thing] = person
      moved(thing, at[person])
    else:
      holder.pop(thing)
  m = re.match(r"Where was the (\w+) before the (\w+)\?", question)
  if m:
    p = path[m.group(1)]
    return p[p.index(m.group(2)) - 1]
  who = question.split()[-1].rstrip("?")
  return at[who] if who in at else path[who][-1]


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3"])
def test_babilong_stories_answer_from_facts(task, books_dir):
  for i in range(6):
    ex = _ex(f"babilong_{task}", i, books_dir)
    pos = 0
    for f in ex.facts:   # facts kept in order inside the book text
      pos = ex.inputs.index(f, pos) + len(f)
    question = ex.inputs.rsplit("Question: ", 1)[1].split(" Answer:")[0]
    assert _simulate(ex.facts, question) == ex.targets
    if task != "qa1":
      assert any("the" in f and f.split()[-1].rstrip(".") in babi.OBJECTS
                 for f in ex.facts)


# ------------------------------------------------------------ token budgets
@pytest.mark.parametrize("length", [1024, 3000])
def test_prompts_fit_the_length_byte_and_bpe(length, books_dir, bpe):
  for vocab in (BYTE, bpe):
    for family in PREDICT:
      if vocab is bpe and eval_tasks.FAMILIES[family].byte_only:
        try:   # laid out exactly where each character is one token
          ex = _ex(family, 0, books_dir, vocab=vocab, length=length)
          assert len(vocab.encode(ex.inputs)) == len(ex.inputs)
        except ValueError as e:
          assert "byte vocabulary" in str(e)
        continue
      ex = _ex(family, 0, books_dir, vocab=vocab, length=length)
      budget = length - eval_tasks.targets_length(vocab, family)
      n = len(vocab.encode(ex.inputs))
      assert 0.9 * budget <= n <= budget, (family, n, budget)
      assert len(vocab.encode(ex.targets)) + 1 <= \
          eval_tasks.targets_length(vocab, family)


def test_registered_tasks_read_through_seqio(books_dir, bpe, monkeypatch):
  monkeypatch.setenv(books.ENV, books_dir)
  names = eval_tasks.register_eval_suite(
      bpe, "tinybpe", lengths=[1024], families=["passkey", "vt", "book_lm"],
      num_examples=5)
  assert names == ["passkey_tinybpe_1k", "vt_tinybpe_1k", "book_lm_tinybpe_1k"]
  assert eval_tasks.register_eval_suite(              # byte positions only
      bpe, "tinybpe", lengths=[1024], families=["digit_carry"]) == []
  assert eval_info.TASK_INFO["passkey_tinybpe_1k"]["kind"] == "predict"
  assert eval_info.feature_lengths("book_lm_tinybpe_1k") == {"targets": 1024}
  assert seqio.get_mixture_or_task("passkey_tinybpe").tasks[0].name == \
      "passkey_tinybpe_1k"
  info = eval_info.TASK_INFO["passkey_tinybpe_1k"]
  ds = seqio.get_mixture_or_task("passkey_tinybpe_1k").get_dataset(
      None, split="validation", shuffle=False)
  exs = list(ds.as_numpy_iterator())
  assert len(exs) == 5
  depths = [float(e["depth"]) for e in exs]
  assert depths == list(eval_tasks.DEFAULT_DEPTHS)
  for e in exs:
    assert len(e["inputs"]) <= info["inputs_length"]
    assert e["targets"][-1] == bpe.eos_id
    assert bpe.decode(e["targets"][:-1].tolist()) == \
        e["targets_pretokenized"].decode()
    t = eval_metrics_postprocess(e)
    assert t["answer"] in e["inputs_pretokenized"].decode()
    assert t["length"] == 1024 and t["context_length"] == len(e["inputs"])
  lm = list(seqio.get_mixture_or_task("book_lm_tinybpe_1k").get_dataset(
      None, split="validation", shuffle=False).as_numpy_iterator())
  assert [len(e["targets"]) for e in lm] == [1024] * 5


def eval_metrics_postprocess(e):
  from famjax.data import eval_metrics
  return eval_metrics.postprocess(e["targets_pretokenized"], example=e,
                                  is_target=True)


def test_byte_suite_registered_on_import():
  for name in ("passkey_byte_2k", "niah_single_noise_byte_8k", "vt_byte_64k",
               "babilong_qa3_byte_1k", "book_lm_byte_16k",
               "scrolls_qasper_byte_4k", "pg19_lm_byte_32k"):
    assert name in seqio.TaskRegistry.names(), name
    assert eval_info.TASK_INFO[name]["vocab"] == "byte"
  assert "passkey_byte" in seqio.TaskRegistry.names()   # the training task
  assert len(seqio.get_mixture_or_task("passkey_byte_all").tasks) == 7
  ruler = {t.name for t in seqio.get_mixture_or_task("ruler_byte").tasks}
  assert "cwe_byte_4k" in ruler and "passkey_byte_4k" not in ruler


def test_book_tasks_without_books_say_how_to_prepare(tmp_path, monkeypatch):
  monkeypatch.setenv(books.ENV, str(tmp_path / "none"))
  task = seqio.get_mixture_or_task("babilong_qa1_byte_1k")
  with pytest.raises(ValueError, match="python -m famjax.data.books prepare"):
    task.get_dataset(None, split="validation", shuffle=False)


def test_book_lm_chunk_is_book_text(books_dir):
  texts = dict(books.load_books(books_dir))
  for i in range(4):
    book, ids = lm_tasks.book_chunk(i, vocab=BYTE, length=2000,
                                    books_path=books_dir)
    assert len(ids) == 2000 and BYTE.decode(ids.tolist()) in texts[book]
    again = lm_tasks.book_chunk(i, vocab=BYTE, length=2000,
                                books_path=books_dir)[1]
    assert np.array_equal(ids, again)


# -------------------------------------------------------------- book files
def test_rdb_parser_and_prepare(tmp_path):
  root = tmp_path / "root"
  data = root / "usr/lib/R/site-library/janeaustenr/data"
  data.mkdir(parents=True)
  emma = ["EMMA", "", "Emma Woodhouse, handsome, clever, and rich."]
  fx.write_rdb(str(data / "Rdata"), {"emma": emma, "persuasion": ["Sir W."]})
  objs = books.read_rdb(str(data / "Rdata.rdb"))
  assert list(objs["emma"]) == emma and list(objs["persuasion"]) == ["Sir W."]
  manifest = books.prepare(str(tmp_path / "out"), root=str(root))
  assert [b["id"] for b in manifest["books"]] == ["austen_emma",
                                                  "austen_persuasion"]
  assert "jargon-text" in manifest["missing_packages"]
  got = dict(books.load_books(str(tmp_path / "out")))
  assert got["austen_emma"] == "\n".join(emma)
  assert books.main(["prepare", "--out", str(tmp_path / "x"),
                     "--root", str(tmp_path / "empty")]) == 2


# ------------------------------------------------------------------ metrics
def _t(answer, depth=None, answers=None):
  return {"answer": answer, "answers": answers or [answer], "depth": depth,
          "length": 0, "context_length": 0}


def test_needle_and_partial_credit_metrics_by_hand():
  from famjax.data import eval_metrics as m
  targets = [_t("123", 0.0), _t("456", 0.0), _t("789", 0.5), _t("111")]
  got = m.needle_accuracy(targets, ["123", "x456y", "nope", "111"])
  assert got == {"accuracy": 75.0, "exact_match": 50.0,
                 "accuracy@depth=0.00": 100.0, "accuracy@depth=0.50": 0.0}
  targets = [_t("a1, b2, c3, d4", answers=["a1", "b2", "c3", "d4"]),
             _t("x", answers=["x"])]
  got = m.partial_credit(targets, ["A1, b2", "x"])
  assert got == {"accuracy": 75.0, "all_correct": 50.0, "exact_match": 50.0}


def test_qa_metrics_by_hand():
  from famjax.data import eval_metrics as m
  got = m.qa_metrics([_t("kitchen"), _t("New York City")],
                     ["The kitchen.", "york city today"])
  assert got["exact_match"] == 50.0 and got["accuracy"] == 50.0
  assert got["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_lm_position_metrics_by_hand():
  from famjax.data import eval_metrics as m
  lp1 = np.where(np.arange(1500) < 1024, -1.0, -2.0)
  hit1 = (np.arange(1500) < 1024).astype(np.float32)
  s1 = np.stack([lp1, hit1]).astype(np.float32)
  s2 = np.array([[-0.5, -0.5, -0.5], [1, 0, 1]], np.float32)
  got = m.lm_position_metrics([None, None], [s1, s2])
  assert got["perplexity@tokens=0-1k"] == pytest.approx(
      np.exp((1024 + 1.5) / 1027))
  assert got["next_token_accuracy@tokens=0-1k"] == pytest.approx(
      100 * 1026 / 1027)
  assert got["perplexity@tokens=1k-4k"] == pytest.approx(np.exp(2.0))
  assert got["next_token_accuracy@tokens=1k-4k"] == 0.0
  assert got["perplexity"] == pytest.approx(np.exp((1024 + 952 + 1.5) / 1503))
  assert got["next_token_accuracy"] == pytest.approx(100 * 1026 / 1503)
  assert "perplexity@tokens=4k-16k" not in got
  only_lp = m.lm_position_metrics([None], [lp1])
  assert "next_token_accuracy" not in only_lp
  assert only_lp["perplexity@tokens=1k-4k"] == pytest.approx(np.exp(2.0))
  padded = np.full((2, 1500), np.nan, np.float32)
  padded[:, :3] = s2
  assert m.lm_position_metrics([None, None], [s1, padded]) == got


# --------------------------------------------------------------------- TFDS
@pytest.mark.parametrize("name", ["scrolls_qasper_byte_1k", "pg19_lm_byte_1k"])
def test_tfds_tasks_on_mock_data(name):
  import tensorflow_datasets as tfds
  info = eval_info.TASK_INFO[name]
  with tfds.testing.mock_data(num_examples=3):   # no split sizes: no cache
    exs = list(seqio.get_mixture_or_task(name).get_dataset(
        None, split="validation", shuffle=False,
        try_in_mem_cache=False).as_numpy_iterator())
  assert len(exs) == 3
  for e in exs:
    if info["kind"] == "score":
      assert 0 < len(e["targets"]) <= info["length"]
    else:
      assert 0 < len(e["inputs"]) <= info["inputs_length"]
      assert len(e["targets"]) <= info["targets_length"]
      assert e["targets"][-1] == BYTE.eos_id
      assert BYTE.decode(e["inputs"].tolist()).endswith(
          f"Question: {e['question'].decode()}\nAnswer: ")


# ------------------------------------------------------------- registration
class _CountingByte(seqio.ByteVocabulary):
  calls = 0

  def _encode(self, s):
    _CountingByte.calls += 1
    return super()._encode(s)


def test_registering_generates_nothing_and_names_parse(tmp_path):
  vocab = _CountingByte()
  names = eval_tasks.register_eval_suite(vocab, "counted", lengths=[1024, 4096])
  assert _CountingByte.calls == 0
  assert "niah_multiquery_counted_4k" in names
  assert "digit_carry_counted_128" in names      # its own lengths
  assert "digit_carry_counted_1k" in names and \
      "digit_carry_counted_16k" not in names
  assert eval_info.TASK_INFO["digit_carry_counted_128"]["num_examples"] == 100
  assert eval_info.TASK_INFO["cwe_counted_4k"]["num_examples"] == \
      eval_tasks.DEFAULT_NUM_EXAMPLES
  assert [n for n in eval_tasks.register_eval_suite(
      BYTE, "carry", lengths=[1024, 300], families=["digit_carry"])] == [
          f"digit_carry_carry_{n}" for n in
          ("128", "256", "300", "512", "1k", "2k", "4k", "8k")]
  assert "scrolls_narrative_qa_counted_1k" in names
  assert eval_info.TASK_INFO["cwe_counted_4k"]["inputs_length"] == 4096 - \
      eval_tasks.targets_length(vocab, "cwe")
  assert eval_tasks.parse_task_name("scrolls_narrative_qa_counted_4k") == (
      "scrolls_narrative_qa", "counted", 4096)
  assert eval_tasks.parse_task_name("ruler_counted") == ("ruler", "counted",
                                                         None)
  assert not eval_tasks.ensure_registered("vt_counted_1k", vocab)
  assert eval_tasks.ensure_registered("vt_other_3000", vocab, lengths=[1024])
  assert {"vt_other_1k", "vt_other_3000"} <= set(eval_info.TASK_INFO)
  # a family with its own lengths, asked beyond them: that one task
  carry = seqio.get_mixture_or_task("digit_carry_carry").tasks
  assert eval_tasks.ensure_registered("digit_carry_carry_32k", BYTE)
  assert eval_info.TASK_INFO["digit_carry_carry_32k"]["length"] == 32768
  assert seqio.get_mixture_or_task("digit_carry_carry").tasks == carry
  with pytest.raises(ValueError, match="vocab_name"):
    eval_tasks.register_eval_suite(vocab, "has_underscore")


# ----------------------------------------------------- through seqio.Evaluator
def _oracle(task_ds, hit_every=1):
  """predict_fn answering from the task's own targets (every hit_every-th
  one right, the others 'wrong')."""
  answers = [e["targets"][:-1].tolist() for e in task_ds.as_numpy_iterator()]

  def predict_fn(ds):
    return [(i, a if i % hit_every == 0 else BYTE.encode("wrong"))
            for i, a in enumerate(answers)]
  return predict_fn


def test_seqio_evaluator_metrics_per_depth_and_bucket(books_dir, monkeypatch):
  monkeypatch.setenv(books.ENV, books_dir)
  eval_tasks.register_eval_suite(BYTE, "ev", lengths=[1200],
                                 families=["passkey", "book_lm"],
                                 num_examples=10)
  lengths = eval_info.feature_lengths("passkey_ev_1200")
  ev = seqio.Evaluator("passkey_ev_1200",
                       seqio.PrefixLMFeatureConverter(pack=False),
                       sequence_length=lengths)
  predict = _oracle(ev.cached_task_datasets["passkey_ev_1200"], hit_every=2)
  metrics, _ = ev.evaluate(compute_metrics=True, predict_fn=predict)
  got = metrics.result()["passkey_ev_1200"]
  # Examples 0, 2, 4, 6, 8 are right: depths 0, .5, 1, .25, .75 (i % 5).
  assert got["accuracy"] == 50.0 and got["exact_match"] == 50.0
  for d in eval_tasks.DEFAULT_DEPTHS:
    assert got[f"accuracy@depth={d:.2f}"] == 50.0
  ev = seqio.Evaluator("book_lm_ev_1200",
                       seqio.DecoderFeatureConverter(pack=False),
                       sequence_length=eval_info.feature_lengths(
                           "book_lm_ev_1200"))

  def score_fn(ds):
    n = 1200   # log-prob -1 before position 1024, -3 after; argmax never
    s = np.stack([np.where(np.arange(n) < 1024, -1.0, -3.0), np.zeros(n)])
    return [(i, s) for i in range(10)]
  metrics, _ = ev.evaluate(compute_metrics=True, score_fn=score_fn)
  got = metrics.result()["book_lm_ev_1200"]
  assert got["perplexity@tokens=0-1k"] == pytest.approx(np.e)
  assert got["perplexity@tokens=1k-4k"] == pytest.approx(np.e ** 3)
  assert got["next_token_accuracy"] == 0.0


def test_show_cli(capsys):
  assert eval_tasks.main(["passkey_byte_1k", "--index", "1"]) == 0
  out = capsys.readouterr().out
  assert "What is the pass key? The pass key is" in out and "'depth': 0.25" in out
  assert eval_tasks.main(["passkey_byt_1k"]) == 2
  assert "close matches: passkey_byte_1k" in capsys.readouterr().err
