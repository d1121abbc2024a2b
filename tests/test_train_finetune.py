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


def test_lora_finetune_from_model_dir(tmp_path, capfd):
  base = str(tmp_path / "base")
  base_cfg, base_params = base_model_dir(base)
  gin_file = tmp_path / "ft.gin"
  gin_file.write_text(FT_GIN)
  run = str(tmp_path / "run")
  args = [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={run}",
          f"--gin.LOAD_PARAMS_FROM={base}"]
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
