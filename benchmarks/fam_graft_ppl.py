"""Zero-shot perplexity per position bucket of a converted model in full /
bswa / fam, with several `fam_prompt` initialisations (no training).

    famjax convert --from gguf .../SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smollm2
    python -m benchmarks.fam_graft_ppl --model_dir=/tmp/smollm2 --tokens=2048 \
        --block=256 --memory=1 --fam_length=32 --variants=full,bswa,fam

Text: a Jane Austen novel from the Debian package r-cran-janeaustenr
(public domain; its .rdb/.rdx R data files are read with PyPI `rdata`).

Variants (comma-separated):
  full, bswa               the modes as converted.
  fam                      fam_prompt as initialised (normal, std 0.02).
  fam_tok:ID               every fam_prompt row = the embedding of token ID
                           (then Phi[l]_{-1} is exactly that token's hidden
                           state at layer l, as if it stood alone).
  fam_first                fam_tok of the text's first token (the token that
                           is the attention sink of `full` on this text).
  famF1_first              fam_first with F = 1 (one sink row, not F copies).
  fam_bias:B               NOT the rules of docs/fam.md: the option
                           AttentionConfig.fam_logit_bias = B, block queries
                           add B to their logits on FAM keys (B = -inf gives
                           bswa exactly). Combined with a prompt as
                           fam_bias:B:first.
Writes benchmarks/results/fam_graft_ppl.json and a PNG of the curves; rows
of an existing JSON with the same text and layout are kept (a run adds or
replaces only the variants it names).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import zlib

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
AUSTEN = "/usr/lib/R/site-library/janeaustenr/data/Rdata"


def austen_text(book: str = "sensesensibility", path: str = AUSTEN) -> str:
  """One novel of janeaustenr as text (its lines joined by newlines)."""
  import rdata
  with open(path + ".rdx", "rb") as fh:
    index = rdata.conversion.convert(rdata.parser.parse_data(
        b"RDX3\n" + gzip.decompress(fh.read())))
  variables = {str(k): v for k, v in index["variables"].items()}
  if book not in variables:
    raise ValueError(f"book {book!r} not in {sorted(variables)}")
  off, n = (int(x) for x in variables[book])
  with open(path + ".rdb", "rb") as fh:
    fh.seek(off)
    blob = fh.read(n)
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    lines = rdata.conversion.convert(rdata.parser.parse_data(
        zlib.decompress(blob[4:])))
  return "\n".join(str(l) for l in lines)


# ----------------------------------------------------------------- scoring
def nll_per_token(model, tokens):
  """Negative log-likelihood of tokens[1:] given the prefix, [T-1]."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  gdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))  # weights as arguments
  logits = fwd(state, jnp.asarray(tokens)[None])[0, :-1]
  lse = jax.nn.logsumexp(logits, -1)
  gold = jnp.take_along_axis(logits, jnp.asarray(tokens[1:])[:, None], -1)[:, 0]
  return np.asarray(lse - gold)


def bucket_ppl(nll, bucket):
  """Perplexity of each `bucket` of target positions (position p + 1)."""
  out = []
  for s in range(0, len(nll) + 1, bucket):
    part = nll[max(0, s - 1):s + bucket - 1]
    if len(part):
      out.append(float(np.exp(np.mean(part))))
  return out


def build(model_dir, variant, args, first_token):
  """The model of one variant."""
  from famjax import params_io
  from famjax.config import AttentionConfig
  parts = variant.split(":")
  name = parts[0]
  f = 1 if name.startswith("famF1") else args.fam_length
  mode = name if name in ("full", "bswa") else "fam"
  bias = float(parts[1]) if name == "fam_bias" else None
  att = AttentionConfig(mode=mode, block_size=args.block,
                        memory_segments=args.memory, fam_length=f,
                        fam_logit_bias=bias)
  _, model = params_io.load_model_dir(model_dir, attention=att)
  token = None
  if name in ("fam_first", "famF1_first") or parts[-1] == "first":
    token = first_token
  elif name == "fam_tok":
    token = int(parts[1])
  if token is not None:
    emb = np.asarray(model.embed.embedding[...])[token]
    model.fam_prompt.set_value(np.broadcast_to(emb, (f, emb.shape[0])).copy())
  return model


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  b = result["bucket"]
  for n, (name, v) in enumerate(result["ppl"].items()):
    # a new line style each time the colour cycle (10 colours) wraps
    ax.plot([b * (i + 0.5) for i in range(len(v))], v, marker="o",
            linestyle=("-", "--", ":")[n // 10 % 3], label=name)
  ax.set_yscale("log")
  ax.set_xlabel("token position (bucket centre)")
  ax.set_ylabel("perplexity")
  ax.set_title(f"{result['model']}: zero-shot, B={result['block']}, "
               f"m={result['memory']}, F={result['fam_length']}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--tokens", type=int, default=2048)
  p.add_argument("--offset", type=int, default=0, help="first token of the text")
  p.add_argument("--book", default="sensesensibility")
  p.add_argument("--block", type=int, default=256)
  p.add_argument("--memory", type=int, default=1)
  p.add_argument("--fam_length", type=int, default=32)
  p.add_argument("--variants", default="full,bswa,fam")
  p.add_argument("--out", default=os.path.join(RESULTS, "fam_graft_ppl.json"))
  args = p.parse_args(argv)
  from famjax.data.vocab import get_vocabulary
  vocab = get_vocabulary(args.model_dir)
  ids = vocab.encode(austen_text(args.book))[args.offset:args.offset + args.tokens]
  tokens = np.asarray(ids, np.int32)
  result = {"model": os.path.basename(os.path.normpath(args.model_dir)),
            "book": args.book, "offset": args.offset, "tokens": len(tokens),
            "block": args.block, "memory": args.memory,
            "fam_length": args.fam_length, "bucket": args.block, "ppl": {},
            "ppl_all": {}, "seconds": {}}
  if os.path.exists(args.out):
    with open(args.out) as fh:
      old = json.load(fh)
    if all(old.get(k) == result[k] for k in ("book", "offset", "tokens", "block",
                                             "memory", "fam_length")):
      result = old
  for variant in args.variants.split(","):
    t0 = time.perf_counter()
    model = build(args.model_dir, variant, args, int(tokens[0]))
    nll = nll_per_token(model, tokens)
    dt = time.perf_counter() - t0
    result["ppl"][variant] = bucket_ppl(nll, args.block)
    result["ppl_all"][variant] = float(np.exp(np.mean(nll)))
    result["seconds"][variant] = round(dt, 1)
    print(f"{variant:22s} ppl {result['ppl_all'][variant]:10.1f}  by bucket "
          f"{[round(x, 1) for x in result['ppl'][variant]]} ({dt:.0f} s)",
          flush=True)
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)
  plot(result, args.out[:-len(".json")] + ".png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
