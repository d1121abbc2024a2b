"""Training: `famjax train` (main), the loop (loop), train/eval steps
(trainer), optimizers, checkpoints, metrics and gin flags."""
