"""famjax.data.loss_weights: whole-sequence loss weights for prefix-LM tasks."""
from __future__ import annotations

import numpy as np
import pytest

from famjax.data import loss_weights


def test_weights_cover_prompt_and_answer_on_train_only():
  kw = dict(seq_len=256, batch_size=2, seed=0, shuffle=False)
  it = loss_weights.weighted_iterator("passkey_byte", "train",
                                      input_weight=0.5, target_weight=3.0, **kw)
  b = next(it)
  tokens, w = b["decoder_target_tokens"], b["decoder_loss_weights"]
  for row in range(2):
    text = bytes(int(t) - 3 for t in tokens[row] if t >= 3).decode()
    n = len(text) + 1                                   # + EOS
    key = text[-5:]
    assert key.isdigit() and text.endswith("The pass key is " + key)
    # The answer (5 digits + EOS) weighs 3, every prompt byte 0.5, padding 0.
    np.testing.assert_array_equal(w[row, n - 6:n], 3.0)
    np.testing.assert_array_equal(w[row, :n - 6], 0.5)
    np.testing.assert_array_equal(w[row, n:], 0.0)
  assert "examples_consumed" in it.get_state()
  it.close()
  ev = loss_weights.weighted_iterator("passkey_byte", "validation",
                                      input_weight=0.5, **kw)
  b = next(ev)
  assert set(np.unique(b["decoder_loss_weights"]).tolist()) == {0, 1}
  assert b["decoder_loss_weights"].sum(1).tolist() == [6, 6]
  ev.close()


def test_negative_weight_is_refused():
  with pytest.raises(ValueError, match="input_weight=-1"):
    loss_weights.weighted_iterator("passkey_byte", "train", input_weight=-1,
                                   seq_len=256, batch_size=2)
