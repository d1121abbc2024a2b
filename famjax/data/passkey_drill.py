"""`passkey_drill_byte`: PassKey text with many needle/question rounds per
sequence, a dense training signal for retrieval (an experiment's curriculum
task; evaluation stays on `passkey_byte`).

A sequence is the PassKey introduction, then rounds of
  needle(key_i), 0..max_gap filler sentences, the question, key_i ". "
until the budget is spent; the last round's key is the "targets". Every round
asks for the key of its own needle, so the answer is always the most recent
key: in-block copying when the needle is near, feedback memory across blocks
when it is not. With whole-sequence loss weights
(`famjax.data.loss_weights`) every round's answer is trained.
"""
from __future__ import annotations

from typing import Dict

from famjax.data import synthetic, tasks
from famjax.data.vocab import get_vocabulary


def _random_sentences(rng, n) -> list:
  """n filler sentences drawn uniformly from synthetic.FILLER."""
  return [synthetic.FILLER[int(j)]
          for j in rng.randint(0, len(synthetic.FILLER), int(n))]


def passkey_drill_example(index: int, *, num_chars: int = 512, seed: int = 0,
                          split: str = "train", max_gap: int = 4,
                          key_digits: int = 5,
                          intro: bool = True) -> Dict[str, str]:
  """Rounds of needle / filler / question / key; targets = the last key.

  Round gaps are 0..max_gap filler sentences; the last round's gap also takes
  whatever whole sentences still fit, so it ends near `num_chars`.
  intro=False leaves out the PassKey introduction (short sequences).
  """
  rng = synthetic.example_rng(index, seed, split)
  question = synthetic.PASSKEY_QUESTION
  needle = synthetic.PASSKEY_NEEDLE
  head = synthetic.INTRO if intro else ""
  fixed = len(head)
  rounds = []                                 # (key, gap sentences)
  while True:
    key = str(rng.randint(10 ** (key_digits - 1), 10 ** key_digits))
    gap = _random_sentences(rng, rng.randint(0, max_gap + 1))
    size = len(needle.format(key=key)) + sum(map(len, gap)) + len(question)
    extra = (len(rounds[-1][0]) + 2) if rounds else 0      # previous answer
    if rounds and fixed + extra + size > num_chars:
      break
    if not rounds and fixed + size > num_chars:
      raise ValueError(f"num_chars={num_chars} is too short for this task: it "
                       f"needs at least {fixed + size} characters.")
    fixed += extra + size
    rounds.append((key, gap))
  last_gap = rounds[-1][1] + synthetic._filler_sentences(  # pylint: disable=protected-access
      num_chars - fixed)
  rounds[-1] = (rounds[-1][0], last_gap)
  parts = [head]
  for i, (key, gap) in enumerate(rounds):
    if i:
      parts.append(rounds[i - 1][0] + ". ")
    parts += [needle.format(key=key)] + gap + [question]
  return {"inputs": "".join(parts), "targets": rounds[-1][0]}


synthetic.GENERATORS.setdefault("passkey_drill", passkey_drill_example)
tasks.register_synthetic_task("passkey_drill_byte", get_vocabulary("byte"),
                              generator=passkey_drill_example)


def key_copy_example(index: int, *, num_chars: int = 512, seed: int = 0,
                     split: str = "train", key_digits: int = 5
                     ) -> Dict[str, str]:
  """Random keys, then the same keys again; targets = the last key.

  "12345 67890 ... 55501. 12345 67890 ... 555" + "01"-style: the first half
  is unpredictable, every digit of the second half can be copied from the
  first (the densest in-context copying signal, a warm-up for PassKey
  retrieval: with whole-sequence loss about half the digits are copies).
  """
  rng = synthetic.example_rng(index, seed, split)
  width = key_digits + 1
  n = max(1, (num_chars // 2 - 1) // width)
  keys = [str(rng.randint(10 ** (key_digits - 1), 10 ** key_digits))
          for _ in range(n)]
  first = " ".join(keys) + ". "
  second = " ".join(keys[:-1]) + (" " if n > 1 else "")
  return {"inputs": first + second, "targets": keys[-1]}


synthetic.GENERATORS.setdefault("key_copy", key_copy_example)
tasks.register_synthetic_task("key_copy_byte", get_vocabulary("byte"),
                              generator=key_copy_example)


# PassKey with a one-digit key (1-9; the filler has no digits): retrieval is
# finding the one digit of the context, a single attention lookup, where the
# 5-digit key also needs an induction circuit to copy the digits in order.
tasks.register_synthetic_task("passkey_digit_byte", get_vocabulary("byte"),
                              generator="passkey", key_digits=1)
# ... and its drill: rounds of needle / filler / question / answer with
# one-digit keys, each question asking for the most recent key.
tasks.register_synthetic_task(
    "passkey_digit_drill_byte", get_vocabulary("byte"),
    generator=passkey_drill_example, key_digits=1)
# ... without the introduction, for short sequences (a length curriculum).
tasks.register_synthetic_task(
    "digit_drill_byte", get_vocabulary("byte"),
    generator=passkey_drill_example, key_digits=1, intro=False, max_gap=1)
# ... and with long gaps (up to 30 filler sentences, about 550 bytes) between
# needle and question: at 2048 bytes a key must be held across several
# blocks (a length curriculum's later stage).
tasks.register_synthetic_task(
    "digit_drill_long_byte", get_vocabulary("byte"),
    generator=passkey_drill_example, key_digits=1, intro=False, max_gap=30)


def digit_recall_example(index: int, *, num_chars: int = 1024, seed: int = 0,
                         split: str = "train", max_lead: int = 8,
                         max_gap: int = 14) -> Dict[str, str]:
  """One one-digit needle, then the same question asked again and again.

  0..max_lead filler sentences, the needle, then rounds of 0..max_gap filler
  sentences, the question and its answer (always the needle's key); the last
  question's answer is the "targets" and its gap takes whatever still fits.
  Every digit in the sequence is the key, so a block without one answers its
  first question only from what the FAM carried in; later questions of that
  block can copy the previous answer. With gaps near one block, about half the
  answers need the FAM: a dense signal for carrying one fact across blocks,
  with nothing to tell apart (no "which digit is the most recent").
  """
  rng = synthetic.example_rng(index, seed, split)
  key = str(rng.randint(1, 10))
  question = synthetic.PASSKEY_QUESTION
  answer = key + ". "

  parts = _random_sentences(rng, rng.randint(0, max_lead + 1))
  parts.append(synthetic.PASSKEY_NEEDLE.format(key=key))
  used = sum(map(len, parts)) + len(question)
  if used > num_chars:
    raise ValueError(f"num_chars={num_chars} is too short for this task: it "
                     f"needs at least {used} characters.")
  while True:
    gap = _random_sentences(rng, rng.randint(0, max_gap + 1))
    size = sum(map(len, gap)) + len(question) + len(answer)
    if used + size > num_chars:
      break
    parts += gap + [question, answer]
    used += size
  parts += synthetic._filler_sentences(num_chars - used)  # pylint: disable=protected-access
  parts.append(question)
  return {"inputs": "".join(parts), "targets": key}


synthetic.GENERATORS.setdefault("digit_recall", digit_recall_example)
# One one-digit key, asked for again and again (stage 3 of the one-digit
# curriculum: carry one fact through the FAM across blocks).
tasks.register_synthetic_task("digit_recall_byte", get_vocabulary("byte"),
                              generator=digit_recall_example)
