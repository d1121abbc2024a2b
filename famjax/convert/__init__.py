"""Hugging Face safetensors and GGUF checkpoints <-> famjax.

* `load_hf(dir)` / `load_gguf(file)`  -> (ModelConfig, params dict)
* `from_pretrained(src, attention=...)` -> a ready `Transformer`
* `convert_hf` / `convert_gguf`          -> a famjax model directory
* `export_hf(famjax_dir, out)` / `export_params(cfg, params, out)`
                                         -> a directory `transformers` loads
* `HFVocabulary`                         -> the checkpoint's tokenizer as a
                                            `seqio.Vocabulary`

The name/transform table shared by every family and both directions lives
in `famjax.convert.table`; the config mapping in `famjax.convert.hf`.
"""
from famjax.convert.errors import ConvertError
from famjax.convert.hf import convert_hf, from_pretrained, load_hf
from famjax.convert.gguf import convert_gguf, load_gguf
from famjax.convert.export import export_hf, export_params

__all__ = ["ConvertError", "convert_hf", "convert_gguf", "export_hf",
           "export_params", "from_pretrained", "load_hf", "load_gguf",
           "HFVocabulary"]


def __getattr__(name):  # seqio/tensorflow only when the vocabulary is used
  if name == "HFVocabulary":
    from famjax.convert.vocab import HFVocabulary
    return HFVocabulary
  raise AttributeError(name)
