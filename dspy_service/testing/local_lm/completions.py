"""The local test LM's answer to one chat completion request, as an OpenAI response body
or as server-sent-event chunks; the request is counted in the shared state.

Pure apart from that count: no HTTP here. The caller has validated `messages` (a
non-empty list); anything else malformed in the request falls back to a default.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from .prompts import message_text, read_prompt
from .responder import compose_reply
from .state import DEFAULT_MODEL, REFUSAL, ServerState


def count_tokens(text_chars: int) -> int:
    return max(1, math.ceil(text_chars / 4))


@dataclass(frozen=True)
class Completion:
    """One answered request: `n` identical choices of `content`."""

    completion_id: str
    created: int
    model: str
    content: str
    n: int
    usage: dict[str, int]

    def body(self) -> dict[str, Any]:
        """The OpenAI `chat.completion` response."""
        message = {"role": "assistant", "content": self.content}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": "stop"} for i in range(self.n)
        ]
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        }

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        """The streamed `chat.completion.chunk`s: one content chunk per choice, then the stops."""
        base = {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created}
        base["model"] = self.model
        delta = {"role": "assistant", "content": self.content}
        chunks = [{**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]} for i in range(self.n)]
        chunks += [{**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]} for i in range(self.n)]
        if include_usage:
            chunks.append({**base, "choices": [], "usage": self.usage})
        return chunks


def complete(state: ServerState, body: dict, arrival: float) -> Completion:
    """Answer a chat completion request (see responder.py) and count it in `state`."""
    messages = body["messages"]
    model = str(body.get("model") or DEFAULT_MODEL)
    response_format = body.get("response_format")
    if model in state.refusing:  # a model that will not do the task (small models do this)
        content = REFUSAL
    else:
        content = compose_reply(read_prompt(messages, response_format), response_format)
    n = body.get("n") or 1
    n = max(1, min(int(n), 128)) if isinstance(n, int) else 1
    prompt_tokens = count_tokens(sum(len(message_text(m.get("content"))) for m in messages if isinstance(m, dict)))
    completion_tokens = count_tokens(len(content)) * n
    state.record(model, arrival, prompt_tokens, completion_tokens)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return Completion(f"chatcmpl-local-{uuid.uuid4().hex[:24]}", int(arrival), model, content, n, usage)
