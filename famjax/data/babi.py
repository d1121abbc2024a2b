"""bAbI-style stories hidden in book text (BABILong-style tasks).

A small world simulator writes stories of people moving between places and
picking up and dropping objects, then asks a question whose answer follows
from one, two or three supporting facts:

  qa1  "Where is Mary?"                      (her last move)
  qa2  "Where is the apple?"                 (who holds it, where they went)
  qa3  "Where was the apple before the hallway?"  (the apple's path)

`babilong(rng, ctx, task=...)` hides the story's sentences, in order, at
random depths of consecutive book sentences (`famjax.data.needles`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from famjax.data import needles

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("bathroom", "hallway", "kitchen", "garden", "office", "bedroom")
OBJECTS = ("football", "apple", "milk")
MOVE = ("{p} moved to the {x}.", "{p} went to the {x}.",
        "{p} journeyed to the {x}.", "{p} travelled to the {x}.",
        "{p} went back to the {x}.")
GET = ("{p} picked up the {x}.", "{p} got the {x}.", "{p} grabbed the {x}.",
       "{p} took the {x}.")
DROP = ("{p} dropped the {x}.", "{p} put down the {x}.",
        "{p} discarded the {x}.", "{p} left the {x}.")
NUM_FACTS = {"qa1": (4, 10), "qa2": (6, 16), "qa3": (8, 20)}
HEAD = ("I will give you a text with facts about where people and objects "
        "are, hidden among other sentences, and a question. Answer it with "
        "one word using only those facts. If a person or an object was in "
        "several places, the latest place is the answer unless the question "
        "asks otherwise.\n<context>\n")


class World:
  """Where everyone and everything is, and each object's path of places."""

  def __init__(self):
    self.at: Dict[str, str] = {}         # person -> place
    self.holds: Dict[str, str] = {}      # object -> person
    self.obj_at: Dict[str, str] = {}     # object -> place (when known)
    self.path: Dict[str, List[str]] = {o: [] for o in OBJECTS}

  def _obj_moved(self, o: str, place: str):
    self.obj_at[o] = place
    if not self.path[o] or self.path[o][-1] != place:
      self.path[o].append(place)

  def actions(self) -> List[Tuple[str, str, str]]:
    """Valid (verb, person, thing) actions now."""
    acts = [("move", p, x) for p in PEOPLE for x in PLACES
            if self.at.get(p) != x]
    acts += [("get", p, o) for p in PEOPLE for o in OBJECTS
             if p in self.at and o not in self.holds]
    acts += [("drop", p, o) for o, p in self.holds.items()]
    return acts

  def apply(self, verb: str, p: str, x: str):
    if verb == "move":
      self.at[p] = x
      for o, holder in self.holds.items():
        if holder == p:
          self._obj_moved(o, x)
    elif verb == "get":
      self.holds[x] = p
      self._obj_moved(x, self.at[p])
    else:
      del self.holds[x]


def _story(rng, task: str, objects: bool) -> Tuple[List[str], World]:
  lo, hi = NUM_FACTS[task]
  world, facts = World(), []
  for _ in range(int(rng.randint(lo, hi + 1))):
    acts = world.actions()
    if not objects:
      acts = [a for a in acts if a[0] == "move"]
    kinds = sorted({a[0] for a in acts})
    weight = {"move": 0.5, "get": 0.3, "drop": 0.2}
    p = [weight[k] for k in kinds]
    kind = kinds[rng.choice(len(kinds), p=[w / sum(p) for w in p])]
    acts = [a for a in acts if a[0] == kind]
    verb, who, x = acts[rng.randint(len(acts))]
    tmpl = {"move": MOVE, "get": GET, "drop": DROP}[verb]
    facts.append(tmpl[rng.randint(len(tmpl))].format(p=who, x=x))
    world.apply(verb, who, x)
  return facts, world


def _question(rng, task: str, world: World) -> Optional[Tuple[str, str]]:
  if task == "qa1":
    people = sorted(world.at)
    p = people[rng.randint(len(people))]
    return f"Where is {p}?", world.at[p]
  if task == "qa2":
    objs = sorted(world.obj_at)
    if not objs:
      return None
    o = objs[rng.randint(len(objs))]
    return f"Where is the {o}?", world.obj_at[o]
  cands = [(o, j) for o in OBJECTS for j in range(1, len(world.path[o]))
           if world.path[o].count(world.path[o][j]) == 1]
  if not cands:
    return None
  o, j = cands[rng.randint(len(cands))]
  return (f"Where was the {o} before the {world.path[o][j]}?",
          world.path[o][j - 1])


def story(rng, task: str) -> Tuple[List[str], str, str]:
  """(facts, question, answer) of a bAbI-style `task` ('qa1'..'qa3')."""
  if task not in NUM_FACTS:
    raise ValueError(f"bAbI task must be one of {sorted(NUM_FACTS)}, "
                     f"got {task!r}")
  for _ in range(1000):
    facts, world = _story(rng, task, objects=task != "qa1")
    qa = _question(rng, task, world)
    if qa is not None:
      return facts, qa[0], qa[1]
  raise RuntimeError(f"could not generate an answerable {task} story")


def babilong(rng, ctx: "needles.Context", *, task: str,
             haystack: str = "book") -> "needles.Example":
  """A bAbI-style story spread, in order, through book sentences."""
  facts, question, answer = story(rng, task)
  depths = sorted(rng.uniform(0, 1, len(facts)))
  text = needles.haystack_prompt(
      rng, ctx, head=HEAD, tail=f"\n</context>\nQuestion: {question} Answer: ",
      needles=[f + " " for f in facts], depths=depths, haystack=haystack)
  return needles.Example(text, answer, [answer], facts=facts)
