"""Test and demo tools only (like `prefect.testing`): never part of serving real jobs."""
