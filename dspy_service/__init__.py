"""dspy-service: DSPy optimization jobs over HTTP on Prefect."""

import os

# Offline hygiene, before anything imports dspy or litellm: both would otherwise fetch a
# model price map from GitHub on first use (a 5 s timeout where there is no network).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
