"""seqio evaluations of famjax models: `famjax eval` (famjax.evals.main) and
`evaluate_model` for evals inside training (famjax.evals.evaluator)."""
from __future__ import annotations


def evaluate_model(model, *, mixture_or_task_name: str, step: int,
                   output_dir: str, batch_size: int = 8,
                   max_examples=None):
  """See famjax.evals.evaluator.evaluate_model (imported lazily: TF, seqio)."""
  from famjax.evals.evaluator import evaluate_model as run
  return run(model, mixture_or_task_name=mixture_or_task_name, step=step,
             output_dir=output_dir, batch_size=batch_size,
             max_examples=max_examples)


__all__ = ["evaluate_model"]
