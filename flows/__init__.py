"""Prefect flows: `optimize_program` composes the tasks of one optimization job."""

import dspy_service  # noqa: F401  (offline environment defaults before dspy is imported)
