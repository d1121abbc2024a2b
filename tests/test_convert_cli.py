"""`famjax convert` end to end, the tokenizer wrapper, and every user error
ending in one line on stderr, exit code 2 and nothing half-written."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from tests import convert_util as U

from famjax import cli
from famjax.config import AttentionConfig
from famjax.params_io import load_config, load_model_dir, load_params

T = 16


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  """A tiny Gemma 3 checkpoint with a tokenizer, and its HF model."""
  path = str(tmp_path_factory.mktemp("gemma3"))
  ref = U.make_hf_model("gemma3", path, seed=11)
  U.write_tiny_tokenizer(path)
  return path, ref


def run(argv, capsys):
  capsys.readouterr()                     # drop earlier output (HF progress)
  rc = cli.main(["convert"] + argv)
  out, err = capsys.readouterr()
  return rc, out, err


def one_line_error(rc, err, *words):
  assert rc == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert "Traceback" not in err
  for w in words:
    assert w.lower() in lines[0].lower(), (w, lines[0])


def test_round_trip_hf_famjax_hf(src, tmp_path, capsys):
  path, ref = src
  d1, d2, d3 = (str(tmp_path / n) for n in ("fj", "hf", "fj2"))
  rc, out, err = run(["--from", "hf", path, "--out", d1, "--attention", "fam",
                      "--block_size", "8", "--memory_segments", "1",
                      "--fam_length", "4"], capsys)
  assert rc == 0, err
  cfg, params = load_config(d1), load_params(d1)
  assert cfg.attention == AttentionConfig("fam", 8, 1, 4)
  prompt = np.asarray(params["fam_prompt"])
  assert prompt.shape == (4, cfg.d_model)
  assert os.path.isfile(os.path.join(d1, "extra", "tokenizer",
                                     "tokenizer.json"))
  # the converted weights, run in `full` mode, are transformers' model
  ids = U.tokens(2, T, seed=12)
  _, full = load_model_dir(d1, attention=AttentionConfig("full"))
  assert np.abs(U.famjax_logits(full, ids) - U.hf_logits(ref, ids)).max() \
      <= 1e-4

  rc, out, err = run(["--to", "hf", d1, "--out", d2], capsys)
  assert rc == 0, err
  os.mkdir(tmp_path / "plain")              # ordinary permissions, not 0700
  assert os.stat(d2).st_mode == os.stat(tmp_path / "plain").st_mode
  back = U.load_hf_model(d2)
  np.testing.assert_array_equal(U.hf_logits(back, ids), U.hf_logits(ref, ids))
  np.testing.assert_array_equal(np.load(os.path.join(d2, "fam_prompt.npy")),
                                prompt)
  assert json.load(open(os.path.join(d2, "fam_config.json")))["fam_length"] \
      == 4
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(d2)
  assert tok("w5 w7").input_ids[-2:] == [9, 11]

  # importing the export again restores the FAM config and the trained prompt
  rc, out, err = run(["--from", "hf", d2, "--out", d3], capsys)
  assert rc == 0, err
  assert load_config(d3) == cfg
  flat = dict(jax.tree_util.tree_leaves_with_path(params))
  flat3 = dict(jax.tree_util.tree_leaves_with_path(load_params(d3)))
  assert set(flat3) == set(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(np.asarray(flat3[k]), np.asarray(v))


def test_gguf_cli_weights_only(tmp_path, capsys):
  ref = U.make_hf_model("llama_plain", str(tmp_path / "hf"), seed=13)
  g = U.write_tiny_gguf(ref, str(tmp_path / "tiny.gguf"))
  out = str(tmp_path / "fj")
  rc, _, err = run(["--from", "gguf", g, "--out", out, "--no_tokenizer",
                    "--attention", "bswa", "--block_size", "4"], capsys)
  assert rc == 0, err
  cfg, model = load_model_dir(out, attention=AttentionConfig("full"))
  ids = U.tokens(1, T, seed=13)
  assert np.abs(U.famjax_logits(model, ids) - U.hf_logits(ref, ids)).max() \
      <= 1e-4


def test_gguf_cli_fam_logit_bias(tmp_path, capsys):
  """--fam_logit_bias=B (outside the FAM rules) is stored with the converted
  model and runs: B = -inf gives the logits of bswa on the same weights;
  a positive B, or a bias outside fam, is one line on stderr and no output."""
  ref = U.make_hf_model("llama_plain", str(tmp_path / "hf"), seed=13)
  g = U.write_tiny_gguf(ref, str(tmp_path / "tiny.gguf"))
  out = str(tmp_path / "fj")
  rc, _, err = run(["--from", "gguf", g, "--out", out, "--no_tokenizer",
                    "--attention", "fam", "--block_size", "4", "--fam_length",
                    "2", "--fam_logit_bias=-inf"], capsys)
  assert rc == 0, err
  assert load_config(out).attention == AttentionConfig(
      "fam", 4, AttentionConfig().memory_segments, 2,
      fam_logit_bias=float("-inf"))
  ids = U.tokens(1, T, seed=13)
  _, closed = load_model_dir(out)
  _, bswa = load_model_dir(out, attention=AttentionConfig(
      "bswa", 4, AttentionConfig().memory_segments))
  _, rules = load_model_dir(out, attention=AttentionConfig(
      "fam", 4, AttentionConfig().memory_segments, 2))
  got = U.famjax_logits(closed, ids)
  assert np.abs(got - U.famjax_logits(bswa, ids)).max() <= 1e-5
  assert np.abs(got - U.famjax_logits(rules, ids)).max() > 1e-3
  for flags, word in ((["--attention", "fam", "--fam_logit_bias=1"],
                       "fam_logit_bias"),
                      (["--attention", "bswa", "--fam_logit_bias=-10"],
                       "fam_logit_bias")):
    rc, _, err = run(["--from", "gguf", g, "--out", str(tmp_path / "bad"),
                      "--no_tokenizer"] + flags, capsys)
    one_line_error(rc, err, word)
    assert word in err
    assert not os.path.exists(tmp_path / "bad")


def test_gguf_tokenizer_needs_no_transformers(tmp_path, capsys, monkeypatch):
  """`convert --from gguf` rebuilds a byte-level BPE tokenizer with the
  `tokenizers` package alone; it is the tokenizer transformers rebuilds."""
  import sys
  ref = U.make_hf_model("llama_plain", str(tmp_path / "hf"), seed=16)
  g = U.write_tiny_gguf(ref, str(tmp_path / "tok.gguf"), tokenizer=True)
  out = str(tmp_path / "fj")
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "transformers", None)     # as on a base install
    rc, _, err = run(["--from", "gguf", g, "--out", out], capsys)
  assert rc == 0, err
  from famjax.data.vocab import model_vocabulary
  from transformers import AutoTokenizer
  from famjax.convert.gguf import fast_gguf_reader
  with fast_gguf_reader():
    want = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tok.gguf")
  v = model_vocabulary(out)
  assert v.eos_id == want.eos_token_id == 2
  for text in ("the lazy dog", "def main(): return 42\n  x", "<|im_end|> fox"):
    assert v.encode(text) == want(text, add_special_tokens=False).input_ids
  assert v.decode(v.encode("the lazy dog\n  x")) == "the lazy dog\n  x"


def test_vocabulary(src, tmp_path):
  from famjax.convert.vocab import HFVocabulary
  import tensorflow as tf
  path, _ = src
  v = HFVocabulary(path)
  assert (v.vocab_size, v.eos_id, v.bos_id, v.unk_id, v.pad_id) == \
      (U.VOCAB, 1, 2, 3, 0)
  ids = v.encode("w1 w2 w3")
  assert ids == [5, 6, 7]
  assert v.decode(ids + [1, 8]) == "w1 w2 w3"          # stops at EOS
  assert v.decode([999]) == ""                          # out of range -> unk
  assert v.encode_tf(tf.constant("w4 w9")).numpy().tolist() == [8, 13]
  batch = v.encode_tf(tf.constant(["w4", "w5 w6"]))
  assert batch.to_list() == [[8], [9, 10]]
  out = v.decode_tf(tf.constant([[5, 6, 1, 7], [8, 9, 10, 0]]))
  assert [s.decode() for s in out.numpy()] == ["w1 w2", "w4 w5 w6"]
  assert v == HFVocabulary(os.path.join(path, "tokenizer.json"))


# -------------------------------------------------------------- user errors
def test_missing_source(tmp_path, capsys):
  rc, _, err = run(["--from", "hf", str(tmp_path / "nope"), "--out",
                    str(tmp_path / "o")], capsys)
  one_line_error(rc, err, "nope")
  rc, _, err = run(["--from", "gguf", str(tmp_path / "nope.gguf"), "--out",
                    str(tmp_path / "o")], capsys)
  one_line_error(rc, err, "missing")
  assert not os.path.exists(tmp_path / "o")


def test_missing_weights_file(src, tmp_path, capsys):
  d = tmp_path / "noweights"
  d.mkdir()
  shutil.copy(os.path.join(src[0], "config.json"), d)
  rc, _, err = run(["--from", "hf", str(d), "--out", str(tmp_path / "o")],
                   capsys)
  one_line_error(rc, err, "model.safetensors")
  assert not os.path.exists(tmp_path / "o")


def test_truncated_safetensors(src, tmp_path, capsys):
  d = tmp_path / "trunc"
  shutil.copytree(src[0], d)
  f = d / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[:len(data) // 2])
  out = tmp_path / "o"
  rc, _, err = run(["--from", "hf", str(d), "--out", str(out)], capsys)
  one_line_error(rc, err, "truncated")
  assert not os.path.exists(out)
  assert not [p for p in os.listdir(tmp_path) if p.startswith("o.tmp")]


def test_truncated_gguf(tmp_path, capsys):
  ref = U.make_hf_model("llama_plain", str(tmp_path / "hf"), seed=14)
  g = U.write_tiny_gguf(ref, str(tmp_path / "t.gguf"))
  data = open(g, "rb").read()
  open(g, "wb").write(data[:len(data) - 5000])
  rc, _, err = run(["--from", "gguf", g, "--out", str(tmp_path / "o"),
                    "--no_tokenizer"], capsys)
  one_line_error(rc, err, "truncated")
  assert not os.path.exists(tmp_path / "o")


def test_unsupported_architectures(tmp_path, capsys):
  import transformers as tr
  gpt2 = tr.GPT2LMHeadModel(tr.GPT2Config(n_embd=32, n_layer=1, n_head=2,
                                          vocab_size=64, n_positions=32))
  gpt2.save_pretrained(str(tmp_path / "gpt2"))
  rc, _, err = run(["--from", "hf", str(tmp_path / "gpt2"), "--out",
                    str(tmp_path / "o")], capsys)
  one_line_error(rc, err, "unsupported", "gpt2", "LlamaForCausalLM",
                 "Gemma3ForCausalLM")
  ref = U.make_hf_model("llama_plain", str(tmp_path / "hf"), seed=15)
  g = U.write_tiny_gguf(ref, str(tmp_path / "g.gguf"), arch="falcon")
  rc, _, err = run(["--from", "gguf", g, "--out", str(tmp_path / "o"),
                    "--no_tokenizer"], capsys)
  one_line_error(rc, err, "unsupported", "falcon", "llama")
  assert not os.path.exists(tmp_path / "o")


def test_shape_mismatch(src, tmp_path, capsys):
  d = tmp_path / "bad"
  shutil.copytree(src[0], d)
  c = json.load(open(d / "config.json"))
  c["intermediate_size"] = 80
  json.dump(c, open(d / "config.json", "w"))
  rc, _, err = run(["--from", "hf", str(d), "--out", str(tmp_path / "o")],
                   capsys)
  one_line_error(rc, err, "shape", "mlp")
  assert not os.path.exists(tmp_path / "o")


def test_existing_output_is_left_alone(src, tmp_path, capsys):
  out = tmp_path / "busy"
  out.mkdir()
  (out / "precious.txt").write_text("keep me")
  for argv in (["--from", "hf", src[0], "--out", str(out)],
               ["--to", "hf", src[0], "--out", str(out)]):
    rc, _, err = run(argv, capsys)
    one_line_error(rc, err, "not empty")
    assert os.listdir(out) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_output_under_a_file_is_one_line(src, tmp_path, capsys):
  (tmp_path / "f").write_text("x")
  for argv in (["--from", "hf", src[0], "--out", str(tmp_path / "f" / "o")],
               ["--to", "hf", src[0], "--out", str(tmp_path / "f" / "o")]):
    rc, _, err = run(argv, capsys)
    one_line_error(rc, err, "is a file")
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_bad_arguments(src, tmp_path, capsys):
  rc, _, err = run(["--from", "hf", src[0]], capsys)          # no --out
  one_line_error(rc, err, "--out")
  rc, _, err = run(["--from", "hf", src[0], "--out", str(tmp_path / "o"),
                    "--attention", "fam", "--block_size", "4",
                    "--fam_length", "8"], capsys)
  one_line_error(rc, err, "fam_length")
  assert not os.path.exists(tmp_path / "o")


def test_export_refuses_unmerged_lora(src, tmp_path):
  from famjax.convert import ConvertError, load
  from famjax.convert.export import export_params
  cfg, params = load(src[0])
  params["layers"]["q"]["lora_a"] = np.zeros((cfg.num_layers, cfg.d_model, 2))
  with pytest.raises(ConvertError, match="merge"):
    export_params(cfg, params, str(tmp_path / "o"))
  assert not os.path.exists(tmp_path / "o")


def test_export_refuses_the_learned_fam_decay(src, tmp_path):
  """fam_decay (outside the rules) adds a weight HF checkpoints lack."""
  from famjax.convert import ConvertError, load
  from famjax.convert.export import export_params
  cfg, params = load(src[0])
  cfg = cfg.with_attention(mode="fam", block_size=4, fam_length=2,
                           fam_decay=0.9)
  params["fam_prompt"] = np.zeros((2, cfg.d_model), np.float32)
  params["layers"]["fam_decay_logit"] = np.zeros((cfg.num_layers,))
  with pytest.raises(ConvertError, match="fam_decay"):
    export_params(cfg, params, str(tmp_path / "o"))
  assert not os.path.exists(tmp_path / "o")


def test_vocabulary_of_a_converted_model_dir_is_its_tokenizer(tmp_path):
  """get_vocabulary(famjax dir) finds the tokenizer the converter stored."""
  from famjax.convert.vocab import HFVocabulary
  from famjax.data.vocab import get_vocabulary, has_hf_tokenizer
  tok = tmp_path / "extra" / "tokenizer"
  tok.mkdir(parents=True)
  U.write_tiny_tokenizer(str(tok))
  assert has_hf_tokenizer(str(tmp_path))
  vocab = get_vocabulary(str(tmp_path))
  assert isinstance(vocab, HFVocabulary)
  ids = vocab.encode("w3 w1 w2")
  assert len(ids) == 3 and vocab.decode(ids).split() == ["w3", "w1", "w2"]
  assert not has_hf_tokenizer(str(tmp_path / "extra"))
