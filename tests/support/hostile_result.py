"""A Prefect result record that runs code when Prefect loads it: the API must refuse it.

`pickle_record(key, marker)` is a valid result record (Prefect's own metadata, naming the
pickle serializer) whose value, once unpickled, creates the file `marker`;
`pickled_value(marker)` is that value alone, as a flow whose state names the pickle
serializer stores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect._internal.result_records import ResultRecordMetadata
from prefect.serializers import PickleSerializer


class TouchFile:
    """Unpickling this creates `path`: the stand-in for whatever a hostile result would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def pickled_value(marker: Path) -> bytes:
    return PickleSerializer().dumps(TouchFile(marker))


def pickle_record(key: str, marker: Path) -> bytes:
    payload = pickled_value(marker).decode()
    metadata = ResultRecordMetadata(storage_key=key, serializer=PickleSerializer())
    return json.dumps({"metadata": json.loads(metadata.dump_bytes()), "result": payload}).encode()
