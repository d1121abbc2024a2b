"""famjax.data.passkey_drill: rounds of PassKey needle / question / answer."""
from __future__ import annotations

import re

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
