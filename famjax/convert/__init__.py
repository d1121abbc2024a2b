"""Hugging Face safetensors and GGUF checkpoints <-> famjax.

* `load(path)`                           -> (ModelConfig, params dict)
* `from_pretrained(src, attention=...)`  -> a ready `Transformer`
* `convert(src, out)`                    -> a famjax model directory (with
                                            the tokenizer and hf_config.json)
* `export_hf(famjax_dir, out)` / `export_params(cfg, params, out)`
                                         -> a directory `transformers` loads
* `HFVocabulary`                         -> the checkpoint's tokenizer as a
                                            `seqio.Vocabulary`

Rooms: `source` (the checkpoint-source interface; `safetensors_dir` and
`gguf` implement it, `gguf_tokenizer` rebuilds a GGUF's tokenizer),
`hf_config` (the one config mapping), `table` (the one weight-name table,
both directions), `importer` (sources -> famjax), `export` (famjax -> HF).
"""
from famjax.convert.errors import ConvertError
from famjax.convert.export import export_hf, export_params
from famjax.convert.importer import convert, from_pretrained, load

__all__ = ["ConvertError", "convert", "export_hf", "export_params",
           "from_pretrained", "load", "HFVocabulary"]


def __getattr__(name):  # seqio/tensorflow only when the vocabulary is used
  if name == "HFVocabulary":
    from famjax.convert.vocab import HFVocabulary
    return HFVocabulary
  raise AttributeError(name)
