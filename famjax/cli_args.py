"""Command-line flags shared by the famjax CLIs (argparse).

The attention flags mean the same in every command that takes them
(`convert`, `generate`, `eval`):

  --attention full|bswa|fam   the attention mode to run the weights with
  --block_size B              tokens per block (bswa, fam)
  --memory_segments m         previous whole blocks a block sees (bswa, fam)
  --fam_length F              FAM rows per layer (fam)
  --fam_logit_bias=B          NOT the rules of docs/fam.md, off by default: a
                              constant B <= 0 block queries add to their
                              logits on FAM keys (fam; -inf: as bswa). Give
                              a negative value with '=' (--fam_logit_bias=-10)

No flag keeps the model's own attention (`base`). `--attention MODE` gives
that mode with the knobs from the flags, else from `base` (when it has a
block structure), else AttentionConfig's defaults. The knobs alone change
the knobs of a bswa / fam `base`. A `base` fam_logit_bias is kept in fam and
dropped when another mode is asked for. (`famjax train` takes attention from a
gin/attention/*.gin file instead.)

    parser = argparse.ArgumentParser(...)
    cli_args.add_attention_flags(parser)
    args = parser.parse_args(argv)
    att = cli_args.attention_from_args(args, base=cfg.attention)  # or None
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from famjax.config import ATTENTION_MODES, AttentionConfig
from famjax.errors import UserError

KNOBS = ("block_size", "memory_segments", "fam_length", "fam_logit_bias")


def add_attention_flags(parser: argparse.ArgumentParser):
  """Adds --attention --block_size --memory_segments --fam_length
  --fam_logit_bias."""
  g = parser.add_argument_group(
      "attention", "how the weights run (default: the model's own attention)")
  g.add_argument("--attention", choices=ATTENTION_MODES, default=None,
                 help="full (causal), bswa (block sliding window) or fam "
                      "(bswa + feedback attention memory)")
  g.add_argument("--block_size", type=int, default=None, metavar="B",
                 help="tokens per block (bswa, fam)")
  g.add_argument("--memory_segments", type=int, default=None, metavar="m",
                 help="previous whole blocks a block sees (bswa, fam)")
  g.add_argument("--fam_length", type=int, default=None, metavar="F",
                 help="FAM rows per layer, 1 <= F <= B (fam)")
  g.add_argument("--fam_logit_bias", type=float, default=None, metavar="B",
                 help="outside the FAM rules, off by default: block queries "
                      "add B <= 0 to their logits on FAM keys (fam; -inf "
                      "gives bswa's outputs); write --fam_logit_bias=-10")
  return g


def attention_from_args(args, base: Optional[AttentionConfig] = None
                        ) -> Optional[AttentionConfig]:
  """The AttentionConfig the flags ask for, or None when none is given.

  Raises UserError for knobs that mean nothing (no --attention and no bswa /
  fam `base`) and for values AttentionConfig.validate refuses.
  """
  knobs = {k: getattr(args, k) for k in KNOBS
           if getattr(args, k, None) is not None}
  mode = getattr(args, "attention", None)
  if mode is None and not knobs:
    return None
  if mode == "full" and knobs:
    raise UserError(f"{', '.join('--' + k for k in knobs)} mean nothing with "
                    "--attention full (choose bswa or fam).")
  has_blocks = base is not None and base.mode != "full"
  if mode is None:
    if not has_blocks:
      raise UserError(f"{', '.join('--' + k for k in knobs)} need "
                      "--attention bswa or fam (the model's attention is "
                      f"{base.mode if base else 'not given'}).")
    mode = base.mode
  start = base if has_blocks else AttentionConfig()
  if mode != "fam" and "fam_logit_bias" not in knobs:
    start = dataclasses.replace(start, fam_logit_bias=None)
  return dataclasses.replace(start, mode=mode, **knobs).validate()
