"""LoRA fine-tuning from a famjax model directory: the full-attention base
model is run with FAM attention and LoRA adapters; only LoRA weights and
fam_prompt train (base weights bit-identical), bf16 compute with float32
params, the loss drops, the export merges LoRA; resume beats load-params."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from famjax import ModelConfig, Transformer, params_io
from famjax.lora import merge_lora
from famjax.train import trainer
from famjax.train.metrics import read_metrics
from tests.conftest import main_in_process

FT_GIN = """
train.model_dir = %MODEL_DIR
train.load_params_from = %LOAD_PARAMS_FROM
train.model_config = None
train.attention = @AttentionConfig()
AttentionConfig.mode = 'fam'
AttentionConfig.block_size = 16
AttentionConfig.memory_segments = 1
AttentionConfig.fam_length = 4
train.model_overrides = {'dtype': 'bfloat16', 'param_dtype': 'float32',
                         'lora_rank': 4, 'lora_alpha': 8.0}
train.trainable = 'lora'
train.task = 'pylib_lm_byte'
train.step_config = @StepConfig()
train.num_steps = 30
train.batch_size = 4
train.seq_len = 64
train.save_every = 30
train.eval_every = 0
train.eval_batches = 2
train.export = True
train.progress_bar = False
make_schedule.schedule = 'constant'
make_schedule.peak_learning_rate = 1e-2
make_schedule.warmup_steps = 0
"""


def base_model_dir(path):
  cfg = ModelConfig(vocab_size=259, d_model=32, num_layers=2, num_heads=2,
                    ffn_dim=64)                       # a 'full' attention model
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  # A random model, but with larger (tied) embeddings, as trained models
  # have: the frozen output layer can then express a peaked distribution.
  params["embed"]["embedding"] = params["embed"]["embedding"] * 10.0
  params_io.save_model_dir(path, cfg, params)
  return cfg, params


def run_args(tmp_path, gin_text, base):
  """(run directory, `famjax train` arguments) of a fine-tune of `base`."""
  gin_file = tmp_path / "ft.gin"
  gin_file.write_text(gin_text)
  run = str(tmp_path / "run")
  return run, [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={run}",
               f"--gin.LOAD_PARAMS_FROM={base}"]


def test_lora_finetune_from_model_dir(tmp_path, capfd):
  base = str(tmp_path / "base")
  base_cfg, base_params = base_model_dir(base)
  run, args = run_args(tmp_path, FT_GIN, base)
  assert main_in_process(*args, "--gin.train.num_steps=1") == 0
  assert main_in_process(*args) == 0
  err = capfd.readouterr().err
  assert f"initialising parameters from {base}" in err
  assert "resuming from checkpoint 1" in err and "is ignored" in err

  ev = read_metrics(run, "eval")
  assert ev[30]["loss"] < ev[1]["loss"] - 0.5, (ev[1], ev[30])

  # The trained state: base weights bit-identical, LoRA and fam_prompt moved.
  state = ocp.StandardCheckpointer().restore(
      os.path.join(run, "checkpoints", "30", "state"))
  got = trainer.flat(state["params"])
  want = trainer.flat(base_params)
  lora = {k for k in got if k[-1] in ("lora_a", "lora_b")}
  assert len(lora) == 2 * 7                          # q k v o gate up down
  assert set(got) == set(want) | lora | {("fam_prompt",)}
  for k, v in want.items():
    assert got[k].dtype == np.float32
    assert np.array_equal(got[k], v), k               # frozen: bit-identical
  for k in lora:
    assert got[k].dtype == np.float32
    if k[-1] == "lora_b":                             # initialised to zeros
      assert np.abs(got[k]).max() > 1e-4, k

  # The export is a plain fam model with LoRA merged into the kernels.
  exp = os.path.join(run, "export")
  cfg = params_io.load_config(exp)
  assert (cfg.attention.mode, cfg.dtype, cfg.lora_rank) == ("fam", "bfloat16", 0)
  exported = trainer.flat(params_io.load_params(exp))
  ft_cfg = cfg.replace(lora_rank=4, lora_alpha=8.0)
  merged = trainer.flat(merge_lora(jax.tree.map(np.asarray, state["params"]),
                                   ft_cfg)[0])
  assert set(exported) == set(want) | {("fam_prompt",)}
  for k in exported:
    np.testing.assert_allclose(exported[k], merged[k], atol=1e-6)
  assert not np.allclose(exported[("layers", "q", "kernel")],
                         want[("layers", "q", "kernel")], atol=1e-5)


# ------------------------------------------- a model with its own tokenizer
OWN_GIN = FT_GIN + """
train.task = %TASK
train.attention = @AttentionConfig()
AttentionConfig.mode = 'full'
train.model_overrides = {}
train.trainable = 'all'
train.num_steps = 12
train.seq_len = 32
train.save_every = 12
train.eval_split = None
make_schedule.peak_learning_rate = 3e-3
"""


def converted_llama_with_tokenizer(tmp_path):
  """`famjax convert --from hf` of a tiny random Llama whose directory holds
  a BPE tokenizer of its 128 ids; returns (famjax dir, HF dir)."""
  from famjax import cli
  from tests import convert_util as U
  hf = str(tmp_path / "hf")
  U.make_hf_model("llama_plain", hf, seed=3)
  U.write_tiny_bpe_tokenizer(hf)
  out = str(tmp_path / "llama_tok")
  assert cli.main(["convert", "--from", "hf", hf, "--out", out]) == 0
  return out, hf


def test_finetune_in_the_models_own_tokenizer_keeps_it(tmp_path, capfd):
  import seqio
  from transformers import AutoTokenizer
  from famjax import cli, decode
  from famjax.data.vocab import model_vocabulary
  from tests import convert_util as U
  base, hf = converted_llama_with_tokenizer(tmp_path)
  run, args = run_args(tmp_path, OWN_GIN, base)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  # A byte task on a 128-token BPE model: refused, one line, nothing written.
  capfd.readouterr()
  rc = main_in_process(*args, "--gin_file=" + os.path.join(
      repo, "gin", "tasks", "passkey_byte.gin"))
  err = capfd.readouterr().err.strip().splitlines()
  assert rc == 2 and not os.path.exists(run)
  assert len(err) == 1, err
  for words in ("task passkey_byte", "byte vocabulary (259 ids)",
                f"model {base} has its own tokenizer (llama_tok, 128 ids)",
                "gin/tasks/passkey_model.gin"):
    assert words in err[0], err[0]

  # The same model on a task in its own tokenizer: the loss falls.
  assert main_in_process(*args, "--gin_file=" + os.path.join(
      repo, "gin", "tasks", "pylib_lm_model.gin")) == 0
  assert "pylib_lm_llama_tok" in seqio.TaskRegistry.names()
  m = read_metrics(run)
  first = np.mean([m[s]["loss"] for s in (1, 2, 3)])
  last = np.mean([m[s]["loss"] for s in (10, 11, 12)])
  assert last < first - 0.3, (first, last)

  # The export keeps the tokenizer and hf_config.json; generate uses it.
  exp = os.path.join(run, "export")
  for f in ("tokenizer/tokenizer.json", "hf_config.json"):
    assert os.path.isfile(os.path.join(exp, "extra", f)), f
  vocab = model_vocabulary(exp)
  prompt = "def main():\n    return"
  _, model = params_io.load_model_dir(exp)
  ids = np.asarray([vocab.encode(prompt)])
  want = np.asarray(decode.generate(model, ids, 12, eos_id=vocab.eos_id))[0]
  want = [int(t) for t in want if t != vocab.eos_id]
  capfd.readouterr()
  assert decode.main(["--model_dir", exp, "--prompt", prompt,
                      "--max_new_tokens", "12"]) == 0
  assert capfd.readouterr().out == vocab.decode(want) + "\n"

  # convert --to hf writes the tokenizer: transformers loads both.
  out = str(tmp_path / "hf_out")
  assert cli.main(["convert", "--to", "hf", exp, "--out", out]) == 0
  tok = AutoTokenizer.from_pretrained(out)
  assert tok(prompt, add_special_tokens=False).input_ids == vocab.encode(prompt)
  back = U.load_hf_model(out)
  np.testing.assert_allclose(U.hf_logits(back, ids),
                             U.famjax_logits(model, ids), atol=1e-4)
