"""bench/common.py: nearest-rank percentiles and the summaries the benchmark reports print."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from common import percentile, summarize  # noqa: E402


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile([3.0, 1.0, 2.0, 5.0, 4.0], 95) == 5.0  # of 5 runs, p95 is the worst
    assert percentile([7.0], 50) == 7.0
    assert summarize([1, 2, 3, 4, 5])["p50"] == 3
