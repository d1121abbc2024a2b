"""Copy a model directory with its `fam_prompt` set to the token embeddings
of a text (an initialisation experiment; no other weight changes).

    python -m benchmarks.fam_prompt_from_text --model_dir=SRC --out=DST \
        --text=" key is "

Row i of the [F, d] prompt becomes the embedding of token i of the text's
last F tokens (the text repeated from the left if it has fewer). Byte
vocabulary only (a token is a byte + 3), the vocabulary of the PassKey
experiments in docs/results.md. DST must not exist.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks import passkey_lengths


def prompt_rows(text: str, f: int, embedding) -> np.ndarray:
  """[f, d]: embeddings of the last f byte tokens of `text` (repeated)."""
  ids = passkey_lengths.byte_ids(text)
  if not ids:
    raise ValueError("--text is empty")
  ids = (ids * (f // len(ids) + 1))[-f:]
  return np.asarray(embedding)[ids].copy()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--text", required=True)
  args = p.parse_args(argv)
  from famjax import params_io
  from famjax.errors import UserError
  cfg = params_io.load_config(args.model_dir)
  params = params_io.load_params(args.model_dir)
  if cfg.attention.mode != "fam" or "fam_prompt" not in params:
    print(f"fam_prompt_from_text: error: {args.model_dir} is not a fam model",
          file=sys.stderr)
    return 2
  if cfg.vocab_size != 259:
    print("fam_prompt_from_text: error: only the byte vocabulary (259 ids) "
          "is supported", file=sys.stderr)
    return 2
  try:
    params["fam_prompt"] = prompt_rows(args.text, cfg.attention.fam_length,
                                       params["embed"]["embedding"])
    params_io.save_model_dir(args.out, cfg, params)
  except (ValueError, UserError) as e:
    print(f"fam_prompt_from_text: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
