"""Fine-tuning from a famjax model directory: full -> fam attention switch,
frozen base weights, bf16 compute, export; resume beats load-params."""
import os

import jax
import numpy as np
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer, params_io
from famjax.train import trainer
from famjax.train.metrics import read_metrics
from tests.conftest import main_in_process

FT_GIN = """
import tests.fake_data
train.model_dir = %MODEL_DIR
train.load_params_from = %LOAD_PARAMS_FROM
train.model_config = None
train.attention = @AttentionConfig()
AttentionConfig.mode = 'fam'
AttentionConfig.block_size = 16
AttentionConfig.memory_segments = 1
AttentionConfig.fam_length = 4
train.model_overrides = {'dtype': 'bfloat16', 'param_dtype': 'float32'}
train.trainable = %TRAINABLE
train.task = 'fake'
train.data_fn = @fake_iterator
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
make_schedule.peak_learning_rate = 3e-2
make_schedule.warmup_steps = 0
"""


def base_model_dir(path):
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2,
                    ffn_dim=64)                       # a 'full' attention model
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  params_io.save_model_dir(path, cfg, params)
  return params


def test_finetune_frozen_base_from_model_dir(tmp_path, capfd):
  base = str(tmp_path / "base")
  base_params = base_model_dir(base)
  gin_file = tmp_path / "ft.gin"
  gin_file.write_text(FT_GIN)
  run = str(tmp_path / "run")
  args = [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={run}",
          f"--gin.LOAD_PARAMS_FROM={base}",
          "--gin.TRAINABLE=regex:^(fam_prompt|final_norm|embed)"]
  assert main_in_process(*args, "--gin.train.num_steps=1") == 0
  assert main_in_process(*args) == 0
  err = capfd.readouterr().err
  assert f"initialising parameters from {base}" in err
  assert "resuming from checkpoint 1" in err and "is ignored" in err

  ev = read_metrics(run, "eval")
  assert ev[30]["loss"] < ev[1]["loss"] - 0.3, (ev[1], ev[30])

  cfg = params_io.load_config(os.path.join(run, "export"))
  assert cfg.attention.mode == "fam" and cfg.dtype == "bfloat16"
  got = trainer.flat(params_io.load_params(os.path.join(run, "export")))
  want = trainer.flat(base_params)
  assert set(got) == set(want) | {("fam_prompt",)}
  for k, v in want.items():
    assert got[k].dtype == np.float32
    if k in (("final_norm", "scale"), ("embed", "embedding")):
      assert not np.array_equal(got[k], v)           # trained
    else:
      assert np.array_equal(got[k], v), k             # frozen: bit-identical
