"""A deterministic, OpenAI-compatible local LM for tests and the offline demo (not a real model).

    with start_local_lm() as server:
        lm = dspy.LM("openai/local-model", api_base=server.url, api_key="local", cache=False)

See ``server.py`` for the endpoints and the skill model, ``task.py`` for the toy task.
"""

from .server import LocalLMServer, start_local_lm
from .task import ARITHMETIC_METRIC_CODE, ARITHMETIC_SIGNATURE_CODE, make_arithmetic_dataset

__all__ = [
    "ARITHMETIC_METRIC_CODE",
    "ARITHMETIC_SIGNATURE_CODE",
    "LocalLMServer",
    "make_arithmetic_dataset",
    "start_local_lm",
]
