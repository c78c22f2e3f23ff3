"""A Prefect result record that runs code when Prefect loads it: the API must refuse it.

`pickle_record(key, marker)` is a valid result record (Prefect's own metadata, naming the
pickle serializer) whose value, once unpickled, creates the file `marker`.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path

from prefect._internal.result_records import ResultRecordMetadata
from prefect.serializers import PickleSerializer


class TouchFile:
    """Unpickling this creates `path`: the stand-in for whatever a hostile result would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def pickle_record(key: str, marker: Path) -> bytes:
    payload = base64.b64encode(pickle.dumps(TouchFile(marker))).decode()
    metadata = ResultRecordMetadata(storage_key=key, serializer=PickleSerializer())
    return json.dumps({"metadata": json.loads(metadata.dump_bytes()), "result": payload}).encode()
