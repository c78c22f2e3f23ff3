"""Prefect flows: `optimize_program` (flows/optimize.py) composes the tasks of one
optimization job; flows/telemetry/ holds what runs beside it inside the job's engine (its
logs, progress, labels and artifacts)."""

import dspy_service  # noqa: F401  (offline environment defaults before dspy is imported)
