"""Every config that breaks docs/fam.md or cannot be built is a ValueError that names
the field to fix, raised when the model is constructed."""
import dataclasses

import pytest
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer


def base(mode="fam", **att):
  a = dict(mode=mode, block_size=4, memory_segments=1, fam_length=2)
  a.update(att)
  return ModelConfig(vocab_size=16, d_model=16, num_layers=2, num_heads=2,
                     num_kv_heads=1, ffn_dim=16,
                     attention=AttentionConfig(**a))


def model_kw(**kw):
  return dataclasses.replace(base(), **kw)


BAD = [
    # attention (docs/fam.md: 1 <= F <= B, B > 0, m >= 0, a known mode)
    pytest.param(base(fam_length=5), "fam_length", id="F>B"),
    pytest.param(base(fam_length=0), "fam_length", id="F=0"),
    pytest.param(base(fam_length=-1), "fam_length", id="F<0"),
    pytest.param(base(block_size=0), "block_size", id="B=0-fam"),
    pytest.param(base("bswa", block_size=-4), "block_size", id="B<0-bswa"),
    pytest.param(base(memory_segments=-1), "memory_segments", id="m<0-fam"),
    pytest.param(base("bswa", memory_segments=-2), "memory_segments",
                 id="m<0-bswa"),
    pytest.param(base("sliding"), "mode", id="unknown-mode"),
    pytest.param(base("FAM"), "mode", id="mode-case"),
    # fam_logit_bias (outside the rules): None or a number <= 0, fam only
    pytest.param(base(fam_logit_bias=1.0), "fam_logit_bias", id="bias>0"),
    pytest.param(base(fam_logit_bias=float("inf")), "fam_logit_bias",
                 id="bias=+inf"),
    pytest.param(base(fam_logit_bias=float("nan")), "fam_logit_bias",
                 id="bias=nan"),
    pytest.param(base(fam_logit_bias="-5"), "fam_logit_bias", id="bias-str"),
    pytest.param(base(fam_logit_bias=True), "fam_logit_bias", id="bias-bool"),
    pytest.param(base("bswa", fam_logit_bias=-5.0), "fam_logit_bias",
                 id="bias-in-bswa"),
    pytest.param(base("full", fam_logit_bias=-5.0), "fam_logit_bias",
                 id="bias-in-full"),
    # fam_state_rms (outside the rules): None or a positive number, fam only
    pytest.param(base(fam_state_rms=0.0), "fam_state_rms", id="rms=0"),
    pytest.param(base(fam_state_rms=-1.0), "fam_state_rms", id="rms<0"),
    pytest.param(base(fam_state_rms=float("inf")), "fam_state_rms",
                 id="rms=inf"),
    pytest.param(base(fam_state_rms="1"), "fam_state_rms", id="rms-str"),
    pytest.param(base("bswa", fam_state_rms=1.0), "fam_state_rms",
                 id="rms-in-bswa"),
    # fam_decay (outside the rules): None or 0 < lambda0 < 1, fam only
    pytest.param(base(fam_decay=0.0), "fam_decay", id="decay=0"),
    pytest.param(base(fam_decay=1.0), "fam_decay", id="decay=1"),
    pytest.param(base(fam_decay=float("nan")), "fam_decay", id="decay=nan"),
    pytest.param(base(fam_decay="0.9"), "fam_decay", id="decay-str"),
    pytest.param(base("bswa", fam_decay=0.9), "fam_decay",
                 id="decay-in-bswa"),
    # model
    pytest.param(model_kw(num_heads=4, num_kv_heads=3), "num_kv_heads",
                 id="kv-not-dividing"),
    pytest.param(model_kw(num_kv_heads=0), "num_kv_heads", id="kv=0"),
    pytest.param(model_kw(head_dim=5), "head_dim", id="odd-head_dim"),
    pytest.param(model_kw(d_model=18, num_heads=2, num_kv_heads=None),
                 "head_dim", id="odd-derived-head_dim"),
    pytest.param(model_kw(d_model=18, num_heads=4, num_kv_heads=None),
                 "num_heads", id="heads-not-dividing-d"),
    pytest.param(model_kw(activation="relu"), "activation",
                 id="unknown-activation"),
    pytest.param(model_kw(layer_types=("global",)), "layer_types",
                 id="layer_types-short"),
    pytest.param(model_kw(layer_types=("local", "global", "global"),
                          sliding_window=3), "layer_types",
                 id="layer_types-long"),
    pytest.param(model_kw(layer_types=("global", "sliding")), "layer_types",
                 id="layer_types-unknown"),
    pytest.param(model_kw(layer_types=("local", "global")), "sliding_window",
                 id="local-without-window"),
    pytest.param(model_kw(sliding_window=0), "sliding_window",
                 id="window=0"),
    pytest.param(model_kw(dtype="float8"), "dtype", id="unknown-dtype"),
    pytest.param(model_kw(param_dtype="int32"), "param_dtype",
                 id="unknown-param_dtype"),
    pytest.param(model_kw(remat_policy="everything"), "remat_policy",
                 id="unknown-remat"),
    pytest.param(model_kw(rope_scaling="yarn"), "rope_scaling",
                 id="unknown-rope-scaling"),
    pytest.param(model_kw(rope_theta=0.0), "rope_theta", id="rope_theta=0"),
    pytest.param(model_kw(vocab_size=0), "vocab_size", id="vocab=0"),
    pytest.param(model_kw(num_layers=0), "num_layers", id="layers=0"),
    pytest.param(model_kw(ffn_dim=-1), "ffn_dim", id="ffn<0"),
]


@pytest.mark.parametrize("cfg,field", BAD)
def test_bad_config_names_the_field(cfg, field):
  with pytest.raises(ValueError, match=rf"\b{field}\b"):
    Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cfg", [
    pytest.param(base(fam_length=4, memory_segments=0), id="F=B-m0"),
    pytest.param(base(fam_length=1, memory_segments=7), id="F=1-large-m"),
    pytest.param(base(fam_logit_bias=0.0), id="bias=0"),
    pytest.param(base(fam_logit_bias=-7), id="bias-int"),
    pytest.param(base(fam_logit_bias=float("-inf")), id="bias=-inf"),
    pytest.param(dataclasses.replace(
        base("bswa"), layer_types=("local", "global"), sliding_window=2),
                 id="bswa-local"),
])
def test_edge_configs_build(cfg):
  """Positive controls: the limits of docs/fam.md are allowed (built abstractly:
  eager random init would cost seconds of compiles)."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  if cfg.attention.mode == "fam":
    assert model.fam_prompt.shape == (cfg.attention.fam_length, cfg.d_model)
