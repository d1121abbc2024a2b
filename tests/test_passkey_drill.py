"""famjax.data.passkey_drill: rounds of PassKey needle / question / answer."""
from __future__ import annotations

import re

import numpy as np

from famjax.data import synthetic
from famjax.data.passkey_drill import passkey_drill_example


def test_every_round_answers_its_own_needle():
  for i in range(20):
    ex = passkey_drill_example(i, num_chars=700, seed=3)
    text = ex["inputs"] + ex["targets"]
    assert len(ex["inputs"]) <= 700 and text.startswith(synthetic.INTRO)
    needles = re.findall(r"The pass key is (\d{5})\. Remember it\. (\d{5}) is", text)
    answers = re.findall(r"What is the pass key\? The pass key is (\d{5})", text)
    assert len(needles) >= 2 and len(answers) == len(needles)
    assert all(a == b for a, b in needles)
    assert [a for a, _ in needles] == answers
    assert ex["inputs"].endswith(synthetic.PASSKEY_QUESTION)
    # The last round's gap takes up the slack: the prompt ends near the budget.
    assert len(ex["inputs"]) > 700 - max(map(len, synthetic.FILLER)) - 20
  assert passkey_drill_example(5, num_chars=700) == passkey_drill_example(
      5, num_chars=700)


def test_key_copy_repeats_every_key():
  from famjax.data.passkey_drill import key_copy_example
  for i, n in ((0, 120), (1, 509), (2, 12)):
    ex = key_copy_example(i, num_chars=n)
    first, second = ex["inputs"].split(". ")
    keys = first.split(" ")
    assert all(re.fullmatch(r"\d{5}", k) for k in keys)
    assert (second + ex["targets"]).split(" ") == keys
    assert len(ex["inputs"]) <= n
  assert key_copy_example(3, split="validation") != key_copy_example(3)


def test_passkey_digit_task_has_one_digit_in_a_digit_free_haystack():
  import seqio
  import famjax.data.passkey_drill  # noqa: F401  (registers the task)
  from famjax.data.pipeline import make_iterator
  vocab = seqio.ByteVocabulary()
  batch = next(make_iterator("passkey_digit_byte", "validation", seq_len=512,
                             batch_size=4))
  for row in np.asarray(batch["decoder_input_tokens"]):
    text = vocab.decode([int(t) for t in row if t > 2])
    digits = re.findall(r"\d", text)
    # the needle says the key twice, the answer once; nothing else is a digit
    assert len(digits) == 3 and len(set(digits)) == 1 and digits[0] != "0"
    assert text.rstrip().endswith("The pass key is " + digits[0])
