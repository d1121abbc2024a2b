"""Deterministic synthetic long-context tasks (no downloads).

Every generator is a pure function of `(index, seed, split)`: example `i` of
a split is the same on every machine and in every run, which is what makes
data iterators checkpointable and evaluation sets fixed. Each returns
`{"inputs": str, "targets": str}` whose `inputs` is at most about `num_chars`
characters long (whole filler sentences are added up to that budget).

* `passkey_example`   PassKey retrieval (Mohtashami & Jaggi 2023, used by
                      the TransformerFAM paper): a 5-digit key hidden at a
                      random depth inside repetitive filler text.
* `multikey_example`  RULER-style multi-key needle: several "magic numbers"
                      keyed by words, one of them is asked for.
* `variable_tracking_example`  RULER-style variable tracking: a chain of
                      assignments `VAR X2 = VAR X1` hidden in filler; name all
                      variables that hold the value.
"""
from __future__ import annotations

import zlib
from typing import Callable, Dict

import numpy as np

INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about the important "
         "information there.\n")
FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ",
          "Here we go. ", "There and back again. ")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUESTION = "What is the pass key? The pass key is "

# Short common words for the multi-key needles (distinct, lower case).
_WORDS = ("apple", "river", "candle", "forest", "marble", "pepper", "violin",
          "harbor", "lantern", "meadow", "copper", "falcon", "garden", "island",
          "jacket", "kettle", "ladder", "mirror", "needle", "orange", "pillow",
          "rocket", "saddle", "tunnel", "wallet", "yellow", "zipper", "basket",
          "button", "carpet", "dragon", "engine")


def example_rng(index: int, seed: int = 0, split: str = "train"
                ) -> np.random.RandomState:
  """The RandomState of example `index` (pure function of its arguments)."""
  if index < 0:
    raise ValueError(f"example index must be >= 0, got {index}")
  ss = np.random.SeedSequence(
      [int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), int(index)])
  return np.random.RandomState(ss.generate_state(1)[0])


def _filler_sentences(n_chars: int):
  """Whole filler sentences, cycling through FILLER, totalling <= n_chars."""
  period = sum(len(s) for s in FILLER)
  out = list(FILLER) * (n_chars // period)
  used = period * len(out) // len(FILLER)
  for s in FILLER:
    if used + len(s) > n_chars:
      break
    out.append(s)
    used += len(s)
  return out


def _fill_around(rng, fixed_chars: int, num_chars: int, needles):
  """Filler text with `needles` inserted at sorted random depths.

  The filler budget is `num_chars - fixed_chars - len(all needles)`; each
  needle lands at a sentence boundary at a uniform random depth.
  """
  budget = num_chars - fixed_chars - sum(len(n) for n in needles)
  if budget < 0:
    raise ValueError(
        f"num_chars={num_chars} is too short for this task: it needs at least "
        f"{num_chars - budget} characters.")
  sentences = _filler_sentences(budget)
  depths = np.sort(rng.uniform(0.0, 1.0, size=len(needles)))
  cuts = np.round(depths * len(sentences)).astype(int)
  pieces, last = [], 0
  for cut, needle in zip(cuts, needles):
    pieces += sentences[last:cut] + [needle]
    last = cut
  pieces += sentences[last:]
  return "".join(pieces)


def passkey_example(index: int, *, num_chars: int = 2048, seed: int = 0,
                    split: str = "train", key_digits: int = 5) -> Dict[str, str]:
  """PassKey retrieval: inputs end with 'The pass key is ', targets = the key."""
  rng = example_rng(index, seed, split)
  key = str(rng.randint(10 ** (key_digits - 1), 10 ** key_digits))
  needle = PASSKEY_NEEDLE.format(key=key)
  body = _fill_around(rng, len(INTRO) + len(PASSKEY_QUESTION), num_chars,
                      [needle])
  return {"inputs": INTRO + body + PASSKEY_QUESTION, "targets": key}


def multikey_example(index: int, *, num_chars: int = 2048, seed: int = 0,
                     split: str = "train", num_keys: int = 4,
                     key_digits: int = 7) -> Dict[str, str]:
  """Multi-key needle: `num_keys` (word, number) needles, one is asked for."""
  if not 1 <= num_keys <= len(_WORDS):
    raise ValueError(f"num_keys={num_keys} must be in 1..{len(_WORDS)}")
  rng = example_rng(index, seed, split)
  words = [_WORDS[i] for i in rng.choice(len(_WORDS), num_keys, replace=False)]
  numbers = [str(rng.randint(10 ** (key_digits - 1), 10 ** key_digits))
             for _ in words]
  needles = [f"One of the special magic numbers for {w} is: {n}. "
             for w, n in zip(words, numbers)]
  order = rng.permutation(num_keys)
  needles = [needles[i] for i in order]
  ask = int(rng.randint(num_keys))
  question = (f"What is the special magic number for {words[ask]}? "
              f"The special magic number for {words[ask]} is: ")
  body = _fill_around(rng, len(INTRO) + len(question), num_chars, needles)
  return {"inputs": INTRO + body + question, "targets": numbers[ask]}


def variable_tracking_example(index: int, *, num_chars: int = 2048,
                              seed: int = 0, split: str = "train",
                              num_hops: int = 4,
                              key_digits: int = 5) -> Dict[str, str]:
  """Variable tracking: `VAR A = 12345.` then `VAR B = VAR A.` ... in order."""
  if num_hops < 1:
    raise ValueError(f"num_hops={num_hops} must be >= 1")
  rng = example_rng(index, seed, split)
  value = str(rng.randint(10 ** (key_digits - 1), 10 ** key_digits))
  letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
  names = []
  while len(names) < num_hops:
    name = "".join(rng.choice(letters, 5))
    if name not in names:
      names.append(name)
  needles = [f"VAR {names[0]} = {value}. "] + [
      f"VAR {names[i]} = VAR {names[i - 1]}. " for i in range(1, num_hops)]
  question = (f"Question: Find all variables that are assigned the value "
              f"{value} in the text above. Answer: ")
  body = _fill_around(rng, len(INTRO) + len(question), num_chars, needles)
  return {"inputs": INTRO + body + question, "targets": " ".join(names)}


GENERATORS: Dict[str, Callable[..., Dict[str, str]]] = {
    "passkey": passkey_example,
    "multikey": multikey_example,
    "variable_tracking": variable_tracking_example,
}
