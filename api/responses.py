"""A JSON response that skips FastAPI's jsonable_encoder for plain dicts.

A route that returns a dict has it walked by `jsonable_encoder` before it is dumped;
for GET /jobs?limit=50 that walk was ~2/3 of the API's own time per request (py-spy,
bench/run.py). The views build plain JSON types already, so dump them directly; anything
else (a datetime, a UUID, a model) still goes through jsonable_encoder.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse


def _fallback(value: Any) -> Any:
    return jsonable_encoder(value)


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"), default=_fallback
        ).encode("utf-8")
