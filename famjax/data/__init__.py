"""Data: vocabularies, synthetic long-context generators, seqio tasks and the
checkpointable batch iterator. Importing `famjax.data.tasks` (done by
`famjax.data.pipeline`) registers the default seqio tasks."""

_LAZY = {
    "make_iterator": "famjax.data.pipeline",
    "DataIterator": "famjax.data.pipeline",
    "check_token_ids": "famjax.data.pipeline",
    "get_vocabulary": "famjax.data.vocab",
    "model_vocabulary": "famjax.data.vocab",
    "check_task_vocabulary": "famjax.data.vocab",
    "register_for_vocabulary": "famjax.data.tasks",
    "register_passkey_task": "famjax.data.tasks",
    "register_synthetic_task": "famjax.data.tasks",
    "register_eval_suite": "famjax.data.eval_tasks",
}


def __getattr__(name):  # lazy: importing famjax.data does not import TF
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'famjax.data' has no attribute {name!r}")
