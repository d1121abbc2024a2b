"""Experiment 2: fine-tune a converted model (SmolLM2-135M) with LoRA +
`fam_prompt` on long book text, and measure it before and after in `full`,
`bswa` and `fam`: perplexity per position bucket on a held-out book up to 32k
tokens, and PassKey with the model's own tokenizer beyond the BSWA window.

Three steps; only `run` needs an accelerator (a 2-core CPU would take days):

    # 1. CPU: tokenise the books and build the PassKey pieces (about 2 min)
    python -m benchmarks.graft_finetune prepare --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --out /tmp/graft_data
    # 2. GPU: zero-shot eval, fine-tune, eval again, per mode; JSON results
    python -m benchmarks.graft_finetune run --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --data /tmp/graft_data --out /tmp/graft_out
    # 3. anywhere: tables and PNGs from the JSON
    python -m benchmarks.graft_finetune report --results /tmp/graft_out/graft_finetune.json \
        --out /tmp/graft_out/report.md

`run --random_weights` runs the same code on random weights of the model's
shape (a smoke test and a timing of compile and steps without the weights);
`check` compares every attention implementation with `xla` on this machine's
backend (logits and gradients, f32 and bf16, all modes).

Data (`prepare`): Austen's Persuasion is held out; the other five Austen
novels, Moby Dick, the World English Bible and the Jargon File are the
training text (`python -m famjax.data.books prepare`). Training batches are
random windows of seq_len + 1 tokens of that text; a fraction `--passkey_frac`
of the rows are PassKey rows instead: filler, one 5-digit key early on, then
the question and its answer asked again at random points later (loss on the
answer digits only, times `--passkey_weight`). Evaluation PassKey prompts use
other keys and lengths up to `--eval_len`; a prompt's answer counts as
retrieved when every answer digit is the argmax given the prompt and the
earlier digits (exactly what greedy decoding would print).

Every prompt is padded to one length, so each mode compiles one forward: a
causal model's predictions at a position never see later tokens.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

TRAIN_BOOKS = ("austen_sensesensibility", "austen_prideprejudice",
               "austen_mansfieldpark", "austen_emma", "austen_northangerabbey",
               "melville_moby_dick", "web_bible", "jargon_file")
HELDOUT_BOOK = "austen_persuasion"
# Pieces start with their space (" The"), as the BPE attaches it, so that
# concatenated pieces are the tokenizer's own ids ("is 71432": "is", " ",
# then one token per digit).
FILLER = (" The grass is green. The sky is blue. The sun is yellow."
          " Here we go. There and back again.")
NEEDLE = (" The pass key is ", ". Remember it. ", " is the pass key.")
QUESTION = " What is the pass key? The pass key is "
ANSWER_END = "."
KEY_DIGITS = 5


def log(*a):
  print(time.strftime("%H:%M:%S"), *a, flush=True)


# ------------------------------------------------------------------ prepare
def _tokenizer(gguf_path, tmp):
  from tokenizers import Tokenizer
  from famjax.convert.gguf_reader import open_gguf
  from famjax.convert.gguf_tokenizer import write_gguf_tokenizer
  out = os.path.join(tmp, "tokenizer")
  if not os.path.exists(out):
    if not write_gguf_tokenizer(open_gguf(gguf_path), out, gguf_path):
      raise SystemExit(f"{gguf_path} has no tokenizer")
  return Tokenizer.from_file(os.path.join(out, "tokenizer.json"))


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False).ids


def prepare(args):
  from famjax.convert.importer import read_checkpoint_path
  from famjax.data import books
  os.makedirs(args.out, exist_ok=True)
  books_dir = os.path.join(args.out, "books")
  manifest = books.prepare(books_dir)
  have = {b["id"]: b["file"] for b in manifest["books"]}
  tok = _tokenizer(args.gguf, args.out)
  eos = tok.token_to_id("<|endoftext|>")
  stream, sizes = [], {}
  for book in TRAIN_BOOKS:
    if book not in have:
      raise SystemExit(f"book {book} missing: install its Debian package")
    with open(os.path.join(books_dir, have[book]), encoding="utf-8") as fh:
      ids = _ids(tok, fh.read())
    sizes[book] = len(ids)
    stream += ids + [eos]
  with open(os.path.join(books_dir, have[HELDOUT_BOOK]), encoding="utf-8") as fh:
    held = _ids(tok, fh.read())
  sizes[HELDOUT_BOOK] = len(held)
  np.save(os.path.join(args.out, "train.npy"), np.asarray(stream, np.uint16))
  np.save(os.path.join(args.out, "heldout.npy"), np.asarray(held, np.uint16))
  pieces = {"filler": _ids(tok, FILLER),
            "needle": [_ids(tok, t) for t in NEEDLE],
            "question": _ids(tok, QUESTION),
            "answer_end": _ids(tok, ANSWER_END),
            "digits": [_ids(tok, str(d)) for d in range(10)]}
  if any(len(d) != 1 for d in pieces["digits"]):
    raise SystemExit("digits are not single tokens in this vocabulary")
  # Do concatenated pieces give the tokenizer's own ids? (reported only)
  rng = np.random.RandomState(0)
  same = 0
  for _ in range(20):
    key = _key(rng)
    text = FILLER + NEEDLE[0] + key + NEEDLE[1] + key + NEEDLE[2] + FILLER + \
        QUESTION + key + ANSWER_END
    ids = (pieces["filler"] + _needle(pieces, key) + pieces["filler"] +
           pieces["question"] + [pieces["digits"][int(c)][0] for c in key] +
           pieces["answer_end"])
    same += ids == _ids(tok, text)
  cfg, _, _ = read_checkpoint_path(args.gguf)
  meta = {"tokens": sizes, "eos": eos, "pieces": pieces,
          "pieces_match_tokenizer": f"{same}/20",
          "model_config": json.loads(cfg.to_json())}
  with open(os.path.join(args.out, "meta.json"), "w") as fh:
    json.dump(meta, fh)
  log(f"train {len(stream)} tokens, held out {len(held)} tokens "
      f"({HELDOUT_BOOK}); pieces match the tokenizer in {same}/20 prompts")


def _key(rng):
  return str(rng.randint(1, 10)) + "".join(
      str(d) for d in rng.randint(0, 10, KEY_DIGITS - 1))


def _needle(pieces, key):
  dig = [pieces["digits"][int(c)][0] for c in key]
  a, b, c = pieces["needle"]
  return a + dig + b + dig + c


# ------------------------------------------------------------- passkey rows
def passkey_prompt(pieces, length, depth, key):
  """(ids [length], answer positions [KEY_DIGITS]): filler with the needle
  at `depth` of the filler, then the question; the answer digits end the
  prompt (positions index the digits' tokens)."""
  fill, dig = pieces["filler"], [pieces["digits"][int(c)][0] for c in key]
  needle = _needle(pieces, key)
  tail = pieces["question"] + dig
  room = length - len(needle) - len(tail)
  filler = (fill * (room // len(fill) + 1))[:room]
  cut = min(int(round(depth * (room // len(fill)))) * len(fill), room)
  ids = filler[:cut] + needle + filler[cut:] + tail
  start = length - KEY_DIGITS
  return np.asarray(ids, np.int32), np.arange(start, length)


def passkey_train_row(pieces, length, rng, asks: int):
  """A training row [length] and its loss weights: the needle in the first
  quarter, then `asks` question + answer pairs at random later points."""
  key = _key(rng)
  fill = pieces["filler"]
  dig = [pieces["digits"][int(c)][0] for c in key]
  units = length // len(fill) + 2
  at = rng.randint(0, max(units // 4, 1))
  asks_at = set(rng.choice(np.arange(at + 1, units), size=min(asks, units - at - 1),
                           replace=False).tolist())
  ids, w = [], []
  for u in range(units):
    ids += fill
    w += [0.0] * len(fill)
    if u == at:
      nd = _needle(pieces, key)
      ids += nd
      w += [0.0] * len(nd)
    if u in asks_at:
      ids += pieces["question"]
      w += [0.0] * len(pieces["question"])
      ids += dig + pieces["answer_end"]
      w += [1.0] * len(dig) + [0.0] * len(pieces["answer_end"])
  return np.asarray(ids[:length], np.int32), np.asarray(w[:length], np.float32)


def train_batch(stream, pieces, step, args, cursors=None):
  """inputs, targets, weights [batch, seq_len] of train step `step`.

  cursors: None (every text row a random window), or a list with one entry
  a row that this function keeps: text row r then reads on from where it
  stopped the step before (`fam_continue` 1), and jumps to a random window
  (`fam_continue` 0) with chance `args.stream_reset` or at the stream's end.
  PassKey rows never continue.
  """
  rng = np.random.RandomState(args.seed * 100003 + step)
  n = args.seq_len + 1
  rows, weights, cont = [], [], []
  n_pk = int(round(args.passkey_frac * args.batch))
  for r in range(args.batch):
    go_on = False
    if r >= args.batch - n_pk:
      ids, w = passkey_train_row(pieces, n, rng, args.passkey_asks)
      w = w * args.passkey_weight
    else:
      s = rng.randint(0, len(stream) - n)     # drawn always: same rng stream
      if cursors is not None:
        go_on = (cursors[r] is not None and cursors[r] + n <= len(stream)
                 and rng.rand() >= args.stream_reset)
        s = cursors[r] if go_on else s
        cursors[r] = s + args.seq_len          # the next piece's first input
      ids = stream[s:s + n].astype(np.int32)
      w = np.ones(n, np.float32)
    cont.append(int(go_on))
    rows.append(ids)
    weights.append(w[1:])
  rows = np.stack(rows)
  batch = {"decoder_input_tokens": rows[:, :-1],
           "decoder_target_tokens": rows[:, 1:],
           "decoder_loss_weights": np.stack(weights)}
  if cursors is not None:
    batch["fam_continue"] = np.asarray(cont, np.int32)
  return batch


def eval_set(heldout, pieces, args):
  """Sequences [n, eval_len + 1] and what each is: held-out windows, then
  PassKey prompts (lengths x depths), right-padded."""
  n = args.eval_len + 1
  seqs, info = [], []
  for w in range(args.eval_windows):
    chunk = heldout[w * args.eval_len: w * args.eval_len + n]
    if len(chunk) < n:
      break
    seqs.append(chunk.astype(np.int32))
    info.append({"kind": "text", "window": w})
  rng = np.random.RandomState(args.seed + 7)
  lengths = [int(x) for x in args.passkey_lengths.split(",") if int(x) < n]
  depths = [float(x) for x in args.passkey_depths.split(",")]
  for length in lengths:
    for depth in depths:
      for s in range(args.passkey_samples):
        key = _key(rng)
        ids, pos = passkey_prompt(pieces, length, depth, key)
        row = np.full(n, pieces["filler"][0], np.int32)
        row[:length] = ids
        seqs.append(row)
        info.append({"kind": "passkey", "length": length, "depth": depth,
                     "key": key, "answer": pos.tolist()})
  return np.stack(seqs), info


# ---------------------------------------------------------------------- run
def model_config(meta_cfg, mode, args):
  from famjax.config import AttentionConfig, ModelConfig
  cfg = ModelConfig.from_dict(meta_cfg)
  att = AttentionConfig(mode=mode, block_size=args.block,
                        memory_segments=args.memory, fam_length=args.fam_length,
                        attention_impl=args.impl)
  if args.random_weights and args.tiny:
    cfg = cfg.replace(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                      head_dim=16, ffn_dim=128)
  return cfg.replace(attention=att, lora_rank=args.lora_rank,
                     lora_alpha=float(args.lora_rank), dtype=args.dtype,
                     param_dtype="float32", remat_policy=args.remat)


def make_eval(model):
  """jit (params, tokens [b, T+1]) -> (nll [b, T], correct [b, T])."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def fn(params, tokens):
    m = nnx.merge(graphdef, params, rest)
    logits = m(tokens[:, :-1]).astype(jnp.float32)
    tgt = tokens[:, 1:]
    lse = jax.nn.logsumexp(logits, -1)
    gold = jnp.take_along_axis(logits, tgt[..., None], -1)[..., 0]
    return lse - gold, jnp.argmax(logits, -1) == tgt

  return jax.jit(fn)


def evaluate(fn, params, seqs, info, args):
  """Perplexity per bucket of the text windows, PassKey exact match."""
  import jax
  nll_rows, pk = [], []
  t0 = time.time()
  for i in range(0, len(seqs), args.eval_batch):
    nll, ok = jax.device_get(fn(params, seqs[i:i + args.eval_batch]))
    for j in range(nll.shape[0]):
      it = info[i + j]
      if it["kind"] == "text":
        nll_rows.append(nll[j])
      else:
        pos = np.asarray(it["answer"]) - 1          # predicting position p
        pk.append(dict(it, ok=bool(ok[j, pos].all()),
                       digits_ok=int(ok[j, pos].sum())))
  elapsed = time.time() - t0
  out = {"eval_s": round(elapsed, 1)}
  if nll_rows:
    nll = np.stack(nll_rows)                           # [windows, T]
    edges = _bucket_edges(nll.shape[1], args.bucket)
    out["ppl_buckets"] = {f"{a}-{b}": float(np.exp(nll[:, a:b].mean()))
                          for a, b in edges}
    out["ppl_all"] = float(np.exp(nll.mean()))
    out["ppl_within_8k"] = float(np.exp(nll[:, :8192].mean()))
    out["ppl_beyond_8k"] = (float(np.exp(nll[:, 8192:].mean()))
                            if nll.shape[1] > 8192 else None)
  if pk:
    out["passkey"] = pk
    acc = {}
    for p in pk:
      acc.setdefault(str(p["length"]), []).append(p["ok"])
    out["passkey_by_length"] = {k: float(np.mean(v)) for k, v in acc.items()}
  return out


def _bucket_edges(t, size):
  return [(a, min(a + size, t)) for a in range(0, t, size)]


def train(model, stream, pieces, args, mode, record, save):
  import jax
  import optax
  from famjax import params_io
  from famjax.train import trainer
  params = params_io.params_dict(model)
  keys = trainer.trainable_keys(params, "lora")
  sched = optax.warmup_constant_schedule(0.0, args.lr, args.warmup)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.0))
  cfg = trainer.StepConfig(
      microbatches=args.microbatches,
      p_rsp=args.p_rsp if mode == "fam" else 0.0,
      random_position_offset=args.rpo and mode != "full",
      state_passing=args.state_passing).validate(args.batch)
  state = trainer.init_state(model, tx, keys, seed=args.seed,
                             rsp_rows=cfg.rsp_rows(args.batch))
  cursors = ([None] * args.batch if args.state_passing == "rows"
             else None)                              # the same data every mode
  step = trainer.make_train_step(model, tx, sched, keys, cfg)
  n_tr = sum(int(np.prod(v.shape)) for k, v in trainer.flat(params).items()
             if k in keys)
  record.update(trainable_params=n_tr, step_config=dataclasses.asdict(cfg),
                steps=args.steps, losses=[])
  t0 = time.time()
  times = []
  for s in range(args.steps):
    batch = train_batch(stream, pieces, s, args, cursors)
    ts = time.time()
    state, m = step(state, batch)
    m = jax.device_get(m)
    times.append(time.time() - ts)
    if s == 0:
      record["compile_and_first_step_s"] = round(times[0], 1)
    if s % args.log_every == 0 or s == args.steps - 1:
      record["losses"].append([s, float(m["loss"]), float(m["accuracy"])])
      log(f"{mode} step {s} loss {float(m['loss']):.4f} acc "
          f"{float(m['accuracy']):.3f} grad_norm {float(m['grad_norm']):.3f} "
          f"{times[-1]:.2f}s")
      save()
  steady = times[1:] or times
  record["train_s"] = round(time.time() - t0, 1)
  record["step_s"] = float(np.median(steady))
  record["tokens_per_s"] = args.batch * args.seq_len / record["step_s"]
  return state["params"]


def run(args):
  import jax
  from famjax import params_io
  t_start = time.time()
  with open(os.path.join(args.data, "meta.json")) as fh:
    meta = json.load(fh)
  pieces = meta["pieces"]
  stream = np.load(os.path.join(args.data, "train.npy"))
  heldout = np.load(os.path.join(args.data, "heldout.npy"))
  seqs, info = eval_set(heldout, pieces, args)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "graft_finetune.json")
  result = {"command": " ".join(sys.argv), "args": vars(args),
            "device": str(jax.devices()[0].device_kind),
            "jax": jax.__version__, "modes": {}, "tokens": meta["tokens"]}

  def save():
    with open(path, "w") as fh:
      json.dump(result, fh, indent=1)

  if args.random_weights:
    weights = None
  else:
    from famjax.convert.importer import read_checkpoint_path
    t0 = time.time()
    _, weights, _ = read_checkpoint_path(args.gguf)
    result["load_s"] = round(time.time() - t0, 1)
  for mode in args.modes.split(","):
    left = args.deadline_s - (time.time() - t_start)
    if left < args.min_mode_s:
      log(f"skipping {mode}: {left:.0f}s left")
      result["modes"][mode] = {"skipped": f"{left:.0f}s left"}
      save()
      continue
    cfg = model_config(meta["model_config"], mode, args)
    if weights is None:
      from famjax.model import Transformer
      from flax import nnx
      model = Transformer(cfg, rngs=nnx.Rngs(args.seed))
    else:
      model = params_io.build_model(cfg, weights, source=args.gguf,
                                    seed=args.seed)
    rec = {"config": json.loads(cfg.to_json())}
    result["modes"][mode] = rec
    fn = make_eval(model)
    params = params_io.params_dict(model)
    t0 = time.time()
    rec["before"] = evaluate(fn, params, seqs, info, args)
    rec["before"]["with_compile_s"] = round(time.time() - t0, 1)
    log(mode, "before", _brief(rec["before"]))
    save()
    if args.steps:
      rec["train"] = {}
      params = train(model, stream, pieces, args, mode, rec["train"], save)
      rec["after"] = evaluate(fn, params, seqs, info, args)
      log(mode, "after", _brief(rec["after"]))
    save()
  result["total_s"] = round(time.time() - t_start, 1)
  save()
  log("wrote", path)


def _brief(r):
  return {k: r.get(k) for k in ("ppl_all", "ppl_within_8k", "ppl_beyond_8k",
                                "passkey_by_length", "eval_s")}


# -------------------------------------------------------------------- check
def check(args):
  """Implementations vs `xla` in float32 on this backend: logits, FAM state
  and gradients of a small model, all modes (partial blocks, m = 0, F = B).
  In bfloat16 `xla` is measured against the same float32 reference too, so a
  bf16 implementation's error reads against bf16's own rounding."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from famjax.config import AttentionConfig, ModelConfig
  from famjax.model import Transformer
  rows = []
  tokens = jax.random.randint(jax.random.key(1), (2, 300), 0, 512)

  def forward(mode, blk, mem, f, dtype, impl):
    cfg = ModelConfig(vocab_size=512, d_model=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=32, ffn_dim=256, dtype=dtype,
                      attention=AttentionConfig(
                          mode=mode, block_size=blk, memory_segments=mem,
                          fam_length=f, attention_impl=impl))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    gdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
      lg, aux = nnx.merge(gdef, p, rest)(tokens, return_state=True)
      return jnp.mean(jnp.square(lg.astype(jnp.float32))), (lg, aux)

    (_, (lg, aux)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return (np.asarray(lg, np.float32),
            np.asarray(aux.get("fam_state", jnp.zeros(())), np.float32),
            [np.asarray(x, np.float32) for x in jax.tree.leaves(g)])

  def rel(a, b):
    return float(np.abs(a - b).max() / (float(np.abs(b).max()) or 1.0))

  for mode, blk, mem, f in (("full", 64, 1, 8), ("bswa", 64, 2, 8),
                            ("fam", 64, 1, 16), ("fam", 64, 0, 64)):
    ref = forward(mode, blk, mem, f, "float32", "xla")
    for dtype in args.dtypes.split(","):
      impls = args.impls.split(",")
      if dtype != "float32":
        impls = ["xla"] + [i for i in impls if i != "xla"]
      for impl in impls:
        if impl == "xla" and dtype == "float32":
          continue
        lg, fs, gs = forward(mode, blk, mem, f, dtype, impl)
        rows.append({"dtype": dtype, "mode": mode, "block": blk,
                     "memory": mem, "fam_length": f, "impl": impl,
                     "logits": rel(lg, ref[0]), "fam_state": rel(fs, ref[1]),
                     "grads": max(rel(a, b) for a, b in zip(gs, ref[2]))})
        log(rows[-1])
  out = {"backend": jax.default_backend(),
         "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
         "reference": "xla, float32, same backend", "rows": rows}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "attention_impls_check.json"), "w") as fh:
    json.dump(out, fh, indent=1)


# ------------------------------------------------------------------- report
def _runs(paths, labels):
  """[(label, mode, record)] of the results files, in order."""
  out = []
  for i, path in enumerate(paths):
    with open(path) as fh:
      res = json.load(fh)
    for mode, rec in res["modes"].items():
      if "before" not in rec:
        continue
      steps = rec.get("train", {}).get("steps", 0)
      label = labels[i] if labels and i < len(labels) else f"{mode} {steps} steps"
      if not labels and mode == "fam" and steps:
        label += f", RSP {res['args']['p_rsp']:g}"
      out.append((label, mode, rec))
  return out


def equal_step_ratios(runs):
  """[(label, bucket ends, perplexity / bswa's)] of every fine-tuned run
  that has a fine-tuned `bswa` run of the same number of steps."""
  bswa = {rec["train"]["steps"]: rec["after"]["ppl_buckets"]
          for _, mode, rec in runs if mode == "bswa" and "after" in rec}
  out = []
  for label, mode, rec in runs:
    if mode == "bswa" or "after" not in rec:
      continue
    ref = bswa.get(rec["train"]["steps"])
    if ref is None:
      continue
    b = rec["after"]["ppl_buckets"]
    keys = [k for k in b if k in ref]
    out.append((label, [int(k.split("-")[1]) for k in keys],
                [b[k] / ref[k] for k in keys]))
  return out


def report(args):
  """A markdown table, perplexity-by-position curves and PassKey grids."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from benchmarks import plotting
  runs = _runs(args.results, args.labels.split(",") if args.labels else None)
  fmt = lambda x: "-" if x is None else f"{x:.1f}"
  lines = ["| run | when | all | 0-1k | 1k-8k | 8k-32k | PassKey 2k / 4k / 8k / "
           "16k / 32k | steps | step (s) |", "| --- " * 9 + "|"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
  grids, zero_shot = [], set()
  for label, mode, rec in runs:
    tr = rec.get("train", {})
    for when in ("before", "after"):
      if when not in rec:
        continue
      e = rec[when]
      nll = {k: math.log(v) for k, v in e["ppl_buckets"].items()}
      def lo(a, b):
        vals = [v for k, v in nll.items() if a <= int(k.split("-")[0]) < b]
        return float(np.exp(np.mean(vals))) if vals else None
      pk = " / ".join(f"{v:.0%}" for _, v in sorted(
          e.get("passkey_by_length", {}).items(), key=lambda kv: int(kv[0])))
      lines.append(
          f"| {label} | {when} | {fmt(e.get('ppl_all'))} | {fmt(lo(0, 1024))} | "
          f"{fmt(lo(1024, 8192))} | {fmt(lo(8192, 1 << 30))} | {pk} | "
          + (f"{tr.get('steps', 0)} | {tr.get('step_s', 0):.2f} |"
             if when == "after" else "0 | - |"))
      if when == "before":
        if mode in zero_shot:
          continue                                # one zero-shot curve a mode
        zero_shot.add(mode)
      xs = [int(k.split("-")[1]) for k in e["ppl_buckets"]]
      ax = axes[0 if when == "before" else 1]
      ax.plot(xs, list(e["ppl_buckets"].values()), marker=".",
              label=mode if when == "before" else label)
      if when == "after" and e.get("passkey"):
        grids.append((label, e["passkey"]))
  for ax, when in zip(axes, ("zero-shot (fresh graft)", "after fine-tuning")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axvline(8192, color="gray", ls=":", lw=1)
    ax.set_xlabel("target position (end of its 1k bucket); dotted: 8k context")
    ax.set_title(when, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("perplexity, held-out book")
  stem = os.path.splitext(args.out)[0]
  plotting._save(fig, stem + "_ppl.png", "SmolLM2-135M: perplexity by position")  # pylint: disable=protected-access
  pairs = equal_step_ratios(runs)
  if pairs:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, xs, ratio in pairs:
      ax.plot(xs, ratio, marker=".", label=label)
    ax.axhline(1.0, color="gray", lw=1)
    ax.axvline(8192, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target position (end of its 1k bucket); dotted: 8k context")
    ax.set_ylabel("perplexity / bswa's")
    ax.set_ylim(0.85, 1.25)                    # full leaves it beyond its 8k
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    plotting._save(fig, stem + "_ratio.png",  # pylint: disable=protected-access
                   "after fine-tuning, against bswa of the same steps")
  if grids:
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (label, pk) in zip(axes, grids):
      lengths = sorted({p["length"] for p in pk})
      depths = sorted({p["depth"] for p in pk})
      grid = np.zeros((len(depths), len(lengths)))
      for p in pk:
        grid[depths.index(p["depth"]), lengths.index(p["length"])] += p["ok"]
      grid /= max(1, len(pk) // (len(lengths) * len(depths)))
      ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", origin="lower",
                aspect="auto")
      ax.set_xticks(range(len(lengths)), [f"{l // 1024}k" for l in lengths])
      ax.set_yticks(range(len(depths)), [str(d) for d in depths])
      ax.set_xlabel("prompt length (tokens)")
      ax.set_ylabel("needle depth")
      ax.set_title(label, fontsize=9)
    plotting._save(fig, stem + "_passkey.png",  # pylint: disable=protected-access
                   "PassKey after fine-tuning (green: retrieved)")
  table = "\n".join(lines)
  print(table)
  with open(stem + ".md", "w") as fh:
    fh.write(table + "\n")
  print(f"wrote {stem}.md and its figures (_ppl, _ratio, _passkey .png)")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  pr = sub.add_parser("prepare")
  pr.add_argument("--gguf", required=True)
  pr.add_argument("--out", required=True)
  r = sub.add_parser("run")
  r.add_argument("--gguf", default=None)
  r.add_argument("--data", required=True)
  r.add_argument("--out", required=True)
  r.add_argument("--modes", default="fam,bswa,full")
  r.add_argument("--random_weights", action="store_true")
  r.add_argument("--tiny", action="store_true",
                 help="with --random_weights: a 2-layer d 64 model")
  r.add_argument("--steps", type=int, default=150)
  r.add_argument("--batch", type=int, default=8)
  r.add_argument("--seq_len", type=int, default=8192)
  r.add_argument("--microbatches", type=int, default=4)
  r.add_argument("--block", type=int, default=1024)
  r.add_argument("--memory", type=int, default=1)
  r.add_argument("--fam_length", type=int, default=64)
  r.add_argument("--impl", default="auto")
  r.add_argument("--dtype", default="bfloat16")
  r.add_argument("--remat", default="none")
  r.add_argument("--lora_rank", type=int, default=32)
  r.add_argument("--lr", type=float, default=3e-4)
  r.add_argument("--warmup", type=int, default=20)
  r.add_argument("--p_rsp", type=float, default=0.8)
  r.add_argument("--rpo", type=int, default=1)
  r.add_argument("--state_passing", default="row0", choices=("row0", "rows"),
                 help="rows: text rows read on through the books, each "
                      "fam row from its own last state (StepConfig)")
  r.add_argument("--stream_reset", type=float, default=0.125,
                 help="with rows: chance a step that a text row jumps")
  r.add_argument("--passkey_frac", type=float, default=0.25)
  r.add_argument("--passkey_asks", type=int, default=8)
  r.add_argument("--passkey_weight", type=float, default=20.0)
  r.add_argument("--eval_len", type=int, default=32768)
  r.add_argument("--eval_windows", type=int, default=3)
  r.add_argument("--eval_batch", type=int, default=1)
  r.add_argument("--bucket", type=int, default=1024)
  r.add_argument("--passkey_lengths", default="2048,4096,8192,16384,32768")
  r.add_argument("--passkey_depths", default="0,0.25,0.5,0.75,1")
  r.add_argument("--passkey_samples", type=int, default=1)
  r.add_argument("--seed", type=int, default=0)
  r.add_argument("--log_every", type=int, default=10)
  r.add_argument("--deadline_s", type=float, default=1e9)
  r.add_argument("--min_mode_s", type=float, default=0.0)
  c = sub.add_parser("check")
  c.add_argument("--impls", default="chunked,cudnn")
  c.add_argument("--dtypes", default="float32,bfloat16")
  c.add_argument("--out", required=True)
  rp = sub.add_parser("report")
  rp.add_argument("--results", action="append", required=True,
                  help="a run's graft_finetune.json (repeatable)")
  rp.add_argument("--labels", default="",
                  help="comma-separated labels, one per mode of the files")
  rp.add_argument("--out", required=True, help="the table's path (.md)")
  args = p.parse_args(argv)
  {"prepare": prepare, "run": run, "check": check, "report": report}[args.cmd](args)


if __name__ == "__main__":
  main()
