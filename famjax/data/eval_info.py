"""Metadata of the registered eval tasks, for the evaluator's plots and tables.

TASK_INFO[task_name] = {"family": str, "vocab": str, "length": int (context
tokens), "kind": "predict" | "score"}; the task modules fill it when they
register their tasks.
"""
from __future__ import annotations

from typing import Dict

TASK_INFO: Dict[str, dict] = {}
