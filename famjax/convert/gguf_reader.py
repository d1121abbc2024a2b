"""Opening GGUF files: a `gguf.GGUFReader` over a plain ndarray view of the
memory map (same data, about 2.5x faster to open)."""
from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from famjax.convert.errors import ConvertError


@functools.lru_cache(maxsize=None)
def _reader_class():
  import gguf

  class Reader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of the memory map: same data,
    about 2.5x faster to open (np.memmap slicing dominates otherwise)."""

    @property
    def data(self):
      return self._plain

    @data.setter
    def data(self, value):
      self._plain = (value.view(np.ndarray) if isinstance(value, np.memmap)
                     else value)

  return Reader


@contextlib.contextmanager
def fast_gguf_reader():
  """Within the block, `gguf.GGUFReader` is the faster Reader above (for
  code that opens GGUFs itself, e.g. transformers' tokenizer rebuild)."""
  import gguf
  saved = gguf.GGUFReader
  gguf.GGUFReader = _reader_class()
  try:
    yield
  finally:
    gguf.GGUFReader = saved


def open_gguf(path: str):
  if not os.path.isfile(path):
    raise ConvertError(f"GGUF file {path} is missing.")
  try:
    return _reader_class()(path)
  except Exception as e:  # truncated / not a GGUF: many exception types
    raise ConvertError(f"{path} cannot be read as GGUF ({type(e).__name__}: "
                       f"{e}); the file is truncated or not a GGUF.") from None
