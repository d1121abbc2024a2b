"""Long-context needle generators sized in tokens (PassKey and RULER's
offline tasks), pure functions of `(rng, ctx)`.

Every generator takes a `numpy.random.RandomState` (see `example_rng`) and a
`Context` (the token budget of the prompt, a token counter for the
vocabulary, the book haystack) and returns an `Example`:

  inputs   the prompt, at most `ctx.budget` tokens of the vocabulary;
  targets  the answer text the model should produce;
  answers  the items a partial-credit metric looks for (["12345"] for one);
  depth    where the asked needle sits in the haystack, a fraction in
           [0, 1] of the haystack's characters (-1.0 when not meaningful);
  needle   the text of the asked needle ("" when there is none);
  facts    the story sentences of bAbI-style tasks, in order.

Haystacks: "noise" repeats the PassKey filler sentences (the paper's
format); "book" takes consecutive sentences of public-domain books from a
random place (see `famjax.data.books`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

import numpy as np

from famjax.data import synthetic

_ADJ = ("quiet", "amber", "brisk", "clever", "dusty", "eager", "fancy",
        "gentle", "hollow", "icy", "jolly", "lucky", "merry", "noble", "odd",
        "proud", "rapid", "silent", "tidy", "vivid", "wild", "young", "zesty",
        "bold", "calm", "damp", "faint", "grand", "humble", "keen")
_NOUN = synthetic._WORDS  # pylint: disable=protected-access
RULER_INTRO = ("Some special magic {kind} are hidden within the following "
               "text. Make sure to memorize them. I will quiz you about the "
               "{kind} afterwards.\n")


@dataclasses.dataclass
class Example:
  inputs: str
  targets: str
  answers: List[str]
  depth: float = -1.0
  needle: str = ""
  facts: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Context:
  """What a generator needs besides its random state.

  budget: most tokens the prompt may have.
  count: text -> number of tokens in the vocabulary.
  book_sentences: () -> list of book sentences (raises when no books).
  """
  budget: int
  count: Callable[[str], int]
  book_sentences: Optional[Callable[[], Sequence[str]]] = None


def example_rng(index: int, seed: int, name: str) -> np.random.RandomState:
  """The random state of example `index` of generator `name`."""
  return synthetic.example_rng(index, seed, f"eval/{name}")


def fit(build: Callable[[int], str], guess: int, ctx: Context,
        limit: Optional[int] = None) -> str:
  """build(n) for (about) the largest n with count(build(n)) <= ctx.budget.

  `build` must grow with n; `guess` is a first estimate, `limit` the
  largest n available. Interpolates on the token count, keeping a bracket.
  """
  base = ctx.count(build(0))
  if base > ctx.budget:
    raise ValueError(f"a context of {ctx.budget} tokens is too short for "
                     f"this task: its fixed text alone has {base} tokens")
  lo, lo_text, hi = 0, build(0), (limit + 1 if limit is not None else None)
  n = max(1, guess if hi is None else min(guess, hi - 1))
  tol = max(4, ctx.budget // 100)
  for _ in range(40):
    if hi is not None and hi - lo <= 1:
      break
    text = build(n)
    t = ctx.count(text)
    if t <= ctx.budget:
      lo, lo_text = n, text
      if ctx.budget - t <= tol:
        break
    else:
      hi = n
    est = int(n * (ctx.budget - base) / max(1, t - base))
    n = max(lo + 1, est if est != n else (n + 1 if t <= ctx.budget else n - 1))
    if hi is not None:
      n = min(n, hi - 1)
  return lo_text


def noise_sentences(n_chars: int) -> List[str]:
  """The PassKey filler sentences, cycling, about `n_chars` characters."""
  period = sum(len(s) for s in synthetic.FILLER)
  reps = n_chars // period + 1
  return list(synthetic.FILLER) * reps


def book_haystack(rng, ctx: Context, n_chars: int) -> List[str]:
  """Consecutive book sentences from a random place, >= n_chars characters."""
  if ctx.book_sentences is None:
    raise ValueError("this task needs book text but no books were given")
  sents = ctx.book_sentences()
  start = int(rng.randint(len(sents)))
  out, total, i = [], 0, start
  while total < n_chars and len(out) < len(sents):
    s = sents[i % len(sents)]
    out.append(s)
    total += len(s)
    i += 1
  return out


def insert_at_depths(sentences: Sequence[str], needles: Sequence[str],
                     depths: Sequence[float]) -> str:
  """Join `sentences`, each needle at the boundary nearest its char depth."""
  cum = np.concatenate([[0], np.cumsum([len(s) for s in sentences])])
  total = cum[-1]
  cuts = [int(np.argmin(np.abs(cum - d * total))) for d in depths]
  order = sorted(range(len(needles)), key=lambda j: (cuts[j], j))
  pieces, last = [], 0
  for j in order:
    pieces += list(sentences[last:cuts[j]]) + [needles[j]]
    last = cuts[j]
  pieces += list(sentences[last:])
  return "".join(pieces)


def haystack_prompt(rng, ctx: Context, *, head: str, tail: str,
                    needles: Sequence[str], depths: Sequence[float],
                    haystack: str = "noise") -> str:
  """head + haystack with needles at depths + tail, within ctx.budget."""
  probe = "".join(synthetic.FILLER) * 4
  cpt = len(probe) / max(1, ctx.count(probe))
  want = int(ctx.budget * cpt * 1.3) + 400
  if haystack == "noise":
    sents = noise_sentences(want)
  elif haystack == "book":
    sents = book_haystack(rng, ctx, want * 2)
  else:
    raise ValueError(f"haystack must be 'noise' or 'book', got {haystack!r}")
  avg = max(1.0, sum(len(s) for s in sents) / len(sents))
  guess = int(ctx.budget * cpt / avg)

  def build(n):
    return head + insert_at_depths(sents[:n], needles, depths) + tail
  return fit(build, guess, ctx, limit=len(sents))


def _digits(rng, n: int = 7) -> str:
  return str(rng.randint(10 ** (n - 1), 10 ** n))


def _keys(rng, n: int) -> List[str]:
  pairs = rng.choice(len(_ADJ) * len(_NOUN), n, replace=False)
  return [f"{_ADJ[p // len(_NOUN)]}-{_NOUN[p % len(_NOUN)]}" for p in pairs]


# ------------------------------------------------------------------ PassKey
def passkey(rng, ctx: Context, *, depth: float, key_digits: int = 5
            ) -> Example:
  """PassKey in the paper's format: a 5-digit key (key_digits) at `depth` in
  the filler (which has no digits: a one-digit key is the only digit)."""
  key = _digits(rng, key_digits)
  needle = synthetic.PASSKEY_NEEDLE.format(key=key)
  text = haystack_prompt(rng, ctx, head=synthetic.INTRO,
                         tail=synthetic.PASSKEY_QUESTION, needles=[needle],
                         depths=[depth])
  return Example(text, key, [key], float(depth), needle)


# --------------------------------------------------------------- digit carry
CARRY_FILLER = "abcd"


def digit_carry(rng, ctx: Context, *, depth: float, block: int = 16,
                filler: str = CARRY_FILLER) -> Example:
  """PassKey in miniature, laid out in blocks of `block` byte positions (the
  format `benchmarks/digit_carry.py --vocab byte` trains on): one digit
  0-9 in a haystack of random `filler` letters, then "?" (the question) in
  the last block; the answer is the digit.

  Positions count from the decoder's BOS at position 0, so character i of
  the prompt sits at position i + 1. With n = (budget + 2) // block blocks,
  the needle sits in block round(depth * (n - 2)) at in-block offset 1 to
  block - 1, and the question in block n - 1 at offset 1 to block - 2. A
  byte vocabulary only (one character = one token): the block layout is
  the task.
  """
  n = (ctx.budget + 2) // block
  if n < 2:
    raise ValueError(f"a context of {ctx.budget} tokens is too short for "
                     f"digit_carry: it needs two blocks of {block}")
  q = (n - 1) * block + int(rng.randint(1, block - 1))      # "?" position
  needle_block = int(round(depth * (n - 2)))
  p = needle_block * block + int(rng.randint(1, block))     # digit position
  chars = [filler[i] for i in rng.randint(0, len(filler), q)]
  key = str(rng.randint(0, 10))
  chars[p - 1], chars[q - 1] = key, "?"
  text = "".join(chars)
  if ctx.count(text) != len(text):
    raise ValueError("digit_carry is laid out in byte positions (one "
                     "character, one token): it needs the byte vocabulary")
  return Example(text, key, [key], float(depth), key)


# -------------------------------------------------------------------- RULER
def _magic(key: str, value: str) -> str:
  return f"One of the special magic numbers for {key} is: {value}. "


def niah(rng, ctx: Context, *, depth: float, haystack: str = "noise",
         num_keys: int = 1, num_values: int = 1,
         num_queries: int = 1) -> Example:
  """RULER needle-in-a-haystack (single, multi-key, -value, -query).

  num_keys keys with needles (the first num_queries of them are asked),
  each asked key holding num_values values. The first asked needle sits at
  `depth`, the others at uniform random depths.
  """
  keys = _keys(rng, max(num_keys, num_queries))
  values = {k: [_digits(rng) for _ in range(num_values)] for k in keys}
  needles = [_magic(k, v) for k in keys for v in values[k]]
  depths = [float(depth)] + list(rng.uniform(0, 1, len(needles) - 1))
  asked = keys[:num_queries]
  answers = [v for k in asked for v in values[k]]
  if num_queries > 1:
    names = ", ".join(asked[:-1]) + " and " + asked[-1]
    q = (f"What are all the special magic numbers for {names} mentioned in "
         f"the provided text? The special magic numbers for {names} "
         "mentioned in the provided text are: ")
  elif num_values > 1:
    q = (f"What are all the special magic numbers for {asked[0]} mentioned "
         f"in the provided text? The special magic numbers for {asked[0]} "
         "mentioned in the provided text are: ")
  else:
    q = (f"What is the special magic number for {asked[0]} mentioned in the "
         f"provided text? The special magic number for {asked[0]} mentioned "
         "in the provided text is: ")
  text = haystack_prompt(rng, ctx, head=RULER_INTRO.format(kind="numbers"),
                         tail="\n" + q, needles=needles, depths=depths,
                         haystack=haystack)
  single = num_queries == 1 and num_values == 1
  return Example(text, ", ".join(answers), answers,
                 float(depth) if num_queries == 1 else -1.0,
                 needles[0] if single else "")


def variable_tracking(rng, ctx: Context, *, num_hops: int = 4) -> Example:
  """RULER variable tracking: VAR B = VAR A chains; name all holders."""
  value = _digits(rng, 5)
  names: List[str] = []
  while len(names) < num_hops + 1:
    name = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 5))
    if name not in names:
      names.append(name)
  needles = [f"VAR {names[0]} = {value}. "] + [
      f"VAR {names[i]} = VAR {names[i - 1]}. " for i in range(1, len(names))]
  depths = sorted(rng.uniform(0, 1, len(needles)))
  q = (f"\nQuestion: Find all variables that are assigned the value {value} "
       "in the text above. Answer: According to the chain(s) of variable "
       "assignment in the text above, these variables are assigned the "
       f"value {value}: ")
  head = ("Memorize and track the chain(s) of variable assignment hidden in "
          "the following text.\n")
  text = haystack_prompt(rng, ctx, head=head, tail=q, needles=needles,
                         depths=depths)
  return Example(text, " ".join(names), names)


def pseudo_words(rng, n: int) -> List[str]:
  """n distinct pronounceable made-up words (2-3 syllables)."""
  cons, vows = "bdfgklmnprstvz", "aeiou"
  out, seen = [], set()
  while len(out) < n:
    syl = rng.randint(2, 4)
    w = "".join(cons[rng.randint(len(cons))] + vows[rng.randint(len(vows))]
                for _ in range(syl))
    if w not in seen:
      seen.add(w)
      out.append(w)
  return out


def _sub_rng(rng) -> Callable[[], np.random.RandomState]:
  seed = int(rng.randint(2 ** 31))
  return lambda: np.random.RandomState(seed)


def common_words(rng, ctx: Context, *, num_common: int = 10) -> Example:
  """RULER common-words extraction over a numbered list of made-up words.

  num_common words appear freq_common times each, the others (as many as
  the budget holds) fewer times; the answer is the common ones.
  """
  head = ("Below is a numbered list of words. In these words, some appear "
          "more often than others. Memorize the ones that appear most "
          "often.\n")
  tail = (f"\nQuestion: What are the {num_common} most common words in the "
          f"above list? Answer: The top {num_common} words that appear most "
          "often in the list are: ")
  cap = ctx.budget / max(1.0, ctx.count("12. bakotu " * 20) / 20)  # entries
  freq_common = next((f for f in (30, 20, 10, 5, 3)
                      if num_common * f <= 0.5 * cap), 2)
  freq_rare = 3 if freq_common >= 20 else 1
  words = pseudo_words(rng, num_common + int(cap) + 10)
  common, rare = words[:num_common], words[num_common:]
  fresh = _sub_rng(rng)

  def build(m):
    items = common * freq_common + rare[:m] * freq_rare
    items = [items[i] for i in fresh().permutation(len(items))]
    return head + " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)) + tail
  text = fit(build, max(0, int(cap - num_common * freq_common) // freq_rare),
             ctx, limit=len(rare))
  return Example(text, ", ".join(common), list(common))


def frequent_words(rng, ctx: Context, *, alpha: float = 2.0,
                   num_answers: int = 3) -> Example:
  """RULER frequent-words extraction: Zipf-distributed coded words."""
  head = ("Read the following coded text and track the frequency of each "
          "coded word. Find the three most frequently appeared coded words. ")
  tail = ("\nQuestion: Do not provide any explanation. Please ignore the "
          "dots '....'. What are the three most frequently appeared words in "
          "the above coded text? Answer: According to the coded text above, "
          "the three most frequently appeared words are: ")
  vocab = pseudo_words(rng, 400)
  weights = 1.0 / np.arange(1, len(vocab) + 1) ** alpha
  weights /= weights.sum()
  fresh = _sub_rng(rng)

  def draw(m):
    r = fresh()
    for _ in range(100):  # redraw on a tie between answer and non-answer
      ids = r.choice(len(vocab), m, p=weights)
      counts = np.bincount(ids, minlength=len(vocab))
      top = np.argsort(-counts, kind="stable")
      if m < 10 or counts[top[num_answers - 1]] > counts[top[num_answers]]:
        return ids, [vocab[i] for i in top[:num_answers]]
    raise RuntimeError("frequent_words: no draw without ties")

  def build(m):
    ids, _ = draw(m)
    return head + " ".join(vocab[i] for i in ids) + " ...." + tail
  per = max(1.0, ctx.count("baketu " * 20) / 20)
  text = fit(build, int(ctx.budget / per), ctx)
  m = len(text[len(head):-len(tail)].split()) - 1
  answers = draw(m)[1]
  return Example(text, ", ".join(answers), answers)
