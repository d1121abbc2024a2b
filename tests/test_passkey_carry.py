"""benchmarks/passkey_carry.py: which answers of `digit_recall_byte` need the
FAM (no digit before them in their own block), and their scoring."""
from __future__ import annotations

import numpy as np

from benchmarks import passkey_carry as pc
from famjax.data import passkey_drill, synthetic


def test_answer_sites_by_hand():
  q = synthetic.PASSKEY_QUESTION
  needle = synthetic.PASSKEY_NEEDLE.format(key="7")
  filler = "The sky is blue. " * 6                       # 102 characters
  text = needle + q + "7. " + filler + q + "7. " + filler * 3 + q + "7"
  sites = pc.answer_sites(text, block_size=128)
  assert [text[a] for a, _ in sites] == ["7", "7", "7"]
  # First answer: the needle is in its block. Second: token a + 1 lies in
  # block 1 (the first answer, token < 128, in block 0). Third: 2 blocks on.
  a1, a2, a3 = (a for a, _ in sites)
  assert (a1 + 1) // 128 == 0 and (a2 + 1) // 128 == 1
  assert [b for _, b in sites] == [0, 1, (a3 + 1) // 128 - (a2 + 1) // 128]
  # With one big block everything is in-block.
  assert [b for _, b in pc.answer_sites(text, 4096)] == [0, 0, 0]


def test_recall_examples_have_memory_answers():
  ex = passkey_drill.digit_recall_example(3, num_chars=1022, split="validation")
  sites = pc.answer_sites(ex["inputs"] + ex["targets"], 256)
  assert sum(b == 0 for _, b in sites) and sum(b > 0 for _, b in sites)
  assert all(b >= 0 for _, b in sites)


def test_score_with_oracle_and_constant_forwards():
  texts = [e["inputs"] + e["targets"] for e in
           (passkey_drill.digit_recall_example(i, num_chars=510)
            for i in range(4))]
  keys = [e["targets"] for e in (passkey_drill.digit_recall_example(
      i, num_chars=510) for i in range(4))]

  def oracle(ids):              # logits with the true next token on top
    nxt = {tuple(pc.byte_ids(t)[:-1]): pc.byte_ids(t)[1:] for t in texts}
    out = np.zeros(ids.shape + (259,), np.float32)
    out[0, np.arange(ids.shape[1]), nxt[tuple(ids[0])]] = 1.0
    return out

  res = pc.score(oracle, texts, 128)
  assert all(res["in-block"]) and all(res["memory"]) and res["memory"]
  const = ord(keys[0]) + 3      # always predicts the first text's key

  def constant(ids):
    out = np.zeros(ids.shape + (259,), np.float32)
    out[..., const] = 1.0
    return out

  res = pc.score(constant, texts, 128)
  n_sites = [len(pc.answer_sites(t, 128)) for t in texts]
  want = sum(n for n, k in zip(n_sites, keys) if k == keys[0])
  assert sum(res["in-block"]) + sum(res["memory"]) == want
  assert sum(res[f"memory@{n}"].count(True) for _, _, n in pc.BUCKETS) == \
      sum(res["memory"])


def test_write_spread_sees_the_key_and_only_the_key(monkeypatch):
  from flax import nnx
  from famjax.config import AttentionConfig, ModelConfig
  from famjax.model import Transformer
  att = AttentionConfig(mode="fam", block_size=96, memory_segments=0,
                        fam_length=4)
  model = Transformer(ModelConfig(vocab_size=259, d_model=32, num_layers=2,
                                  num_heads=2, ffn_dim=64, attention=att),
                      rngs=nnx.Rngs(0))
  spread = pc.write_spread(model, 96)
  assert spread.shape == (2,) and (spread > 1e-4).all()
  # A needle without the key: nine identical blocks, no spread at all.
  monkeypatch.setattr(synthetic, "PASSKEY_NEEDLE", "The pass key is here. ")
  assert np.abs(pc.write_spread(model, 96)).max() < 1e-6


def test_fam_prompt_from_text(tmp_path):
  """Only fam_prompt changes, to the embeddings of the text's last F bytes."""
  from flax import nnx
  from benchmarks import fam_prompt_from_text as fp
  from famjax import params_io
  from famjax.config import AttentionConfig, ModelConfig
  from famjax.model import Transformer
  from famjax.train import trainer
  cfg = ModelConfig(vocab_size=259, d_model=16, num_layers=1, num_heads=2,
                    ffn_dim=32, attention=AttentionConfig(
                        mode="fam", block_size=8, memory_segments=0,
                        fam_length=4))
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  params_io.save_model_dir(src, cfg, params_io.params_dict(
      Transformer(cfg, rngs=nnx.Rngs(0))))
  assert fp.main([f"--model_dir={src}", f"--out={dst}", "--text=ab"]) == 0
  before, after = params_io.load_params(src), params_io.load_params(dst)
  emb = np.asarray(before["embed"]["embedding"])
  want = emb[[ord(c) + 3 for c in "abab"]]
  np.testing.assert_array_equal(after["fam_prompt"], want)
  fb, fa = trainer.flat(before), trainer.flat(after)
  assert fb.keys() == fa.keys()
  for k in fb:
    if "fam_prompt" not in str(k):
      np.testing.assert_array_equal(fa[k], fb[k])
  # A second write to the same place is refused, nothing overwritten.
  assert fp.main([f"--model_dir={src}", f"--out={dst}", "--text=xy"]) == 2
  np.testing.assert_array_equal(params_io.load_params(dst)["fam_prompt"], want)
