"""`famjax convert`: Hugging Face / GGUF checkpoints <-> famjax directories.

  famjax convert --from hf   HF_DIR    --out FAMJAX_DIR [attention options]
  famjax convert --from gguf FILE.gguf --out FAMJAX_DIR [attention options]
  famjax convert --to hf     FAMJAX_DIR --out HF_DIR

Attention options choose how the converted weights will run: --attention
full|bswa|fam, --block_size B, --memory_segments m, --fam_length F (`fam`
adds only the FAM prompt: the one an exported famjax model carries, else
the model's initial prompt for --seed), and --fam_logit_bias=B, an option
outside the FAM rules (famjax/cli_args.py). The tokenizer is kept in
extra/tokenizer/ (GGUF: rebuilt as tokenizer.json). --dtype sets the parameter and compute dtype.

A mistake the user can fix (missing or damaged file, unsupported
architecture, existing output) prints one line to stderr and exits 2.
"""
from __future__ import annotations

import argparse
import sys
import time

from famjax import cli_args

USAGE = """\
famjax convert --from hf|gguf SRC --out DIR [--attention full|bswa|fam]
               [--block_size B] [--memory_segments m] [--fam_length F]
               [--fam_logit_bias=B]
               [--dtype float32|bfloat16|float16] [--seed S] [--no_tokenizer]
famjax convert --to hf SRC_FAMJAX_DIR --out HF_DIR"""


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise _UsageError(message)


def _parser():
  p = _Parser(prog="famjax convert", usage=USAGE, add_help=True,
              description="Convert Hugging Face / GGUF checkpoints to and from "
                          "famjax model directories.")
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--from", dest="src_format", choices=("hf", "gguf"),
                 help="import a Hugging Face directory or a GGUF file")
  g.add_argument("--to", dest="dst_format", choices=("hf",),
                 help="export a famjax directory to Hugging Face format")
  p.add_argument("src", help="source checkpoint")
  p.add_argument("--out", required=True, help="new output directory")
  cli_args.add_attention_flags(p)   # default: the source's own attention
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                 default="float32")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of a new fam_prompt")
  p.add_argument("--no_tokenizer", action="store_true",
                 help="convert the weights only (no extra/tokenizer/)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing output directory")
  return p


def _attention(args):
  try:
    return cli_args.attention_from_args(args, base=None)
  except ValueError as e:
    raise _UsageError(str(e)) from None


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    _parser().print_help()
    return 0
  from famjax.errors import UserError
  try:
    args = _parser().parse_args(argv)
    t0 = time.time()
    if args.dst_format == "hf":
      from famjax.convert.export import export_hf
      if args.attention or args.no_tokenizer:
        raise _UsageError("--attention / --no_tokenizer apply to --from only")
      out = export_hf(args.src, args.out, overwrite=args.overwrite)
    else:
      from famjax.convert.importer import convert
      attention = _attention(args)
      if (args.src_format == "gguf") != args.src.endswith(".gguf"):
        raise _UsageError(f"--from {args.src_format} does not fit {args.src}"
                          " (a GGUF is a .gguf file, an HF checkpoint a "
                          "directory)")
      out = convert(args.src, args.out, attention=attention, dtype=args.dtype,
                    seed=args.seed, tokenizer=not args.no_tokenizer,
                    overwrite=args.overwrite)
  except _UsageError as e:
    print(f"famjax convert: error: {e} (see famjax convert --help)",
          file=sys.stderr)
    return 2
  except (UserError, FileNotFoundError) as e:   # internal errors: traceback
    print(f"famjax convert: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out} ({time.time() - t0:.1f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
