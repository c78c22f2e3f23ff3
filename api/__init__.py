"""HTTP facade: validates requests, creates flow runs, reads jobs back from Prefect."""

import dspy_service  # noqa: F401  (offline environment defaults before dspy is imported)
