"""A small sentiment task for the real model: short product reviews, positive or negative.

`sentiment_job` is the POST /run body the real-model tests and `dspy-service demo
--real-model` send: BootstrapFewShot with `predict` by default, greedy answers, a price of
0 per token (a local model costs nothing; without a price LiteLLM knows none for it).
The signature is worded so that this model answers it at all: zero-shot, it answers DSPy's
ChatAdapter prompts with Python code, and only DSPy's JSON fallback gets a label from it.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from .server import MODEL_NAME

SENTIMENT_SIGNATURE_CODE = '''\
import dspy


class ReviewSentiment(dspy.Signature):
    """Answer with one word: positive or negative."""

    review: str = dspy.InputField()
    sentiment: str = dspy.OutputField()
'''

SENTIMENT_METRIC_CODE = '''\
def metric(example, pred, trace=None, pred_name=None, pred_trace=None):
    """1.0 when the answer's first word is the label (any case or punctuation), else 0.0."""
    words = str(pred.sentiment).strip().lower().split()
    return float(bool(words) and words[0].strip(".,!:;\\"'*") == example.sentiment)
'''

POSITIVE = [
    "I love this kettle, it boils water in a minute.",
    "Great headphones, the sound is clear and rich.",
    "The shoes fit perfectly and are very comfortable.",
    "Excellent battery life, it lasts all week.",
    "This blender is fantastic, smoothies come out silky.",
    "Wonderful book, I could not put it down.",
    "The jacket is warm, light and looks great.",
    "Fast delivery and the lamp works beautifully.",
    "Best coffee maker I have ever owned.",
    "The tent was easy to set up and kept us dry.",
    "Lovely soft towels, they feel like a hotel.",
    "My kids adore this board game, we play it every night.",
    "The knife is sharp and well balanced, a joy to use.",
    "Superb camera, the photos are crisp even at night.",
    "Really happy with this chair, my back pain is gone.",
    "The vacuum is quiet and picks up everything.",
    "Beautiful mug, sturdy and keeps coffee hot.",
    "Five stars, the charger works with all my devices.",
    "The backpack is roomy and the zippers are solid.",
    "Amazing value, the speaker is loud and clear.",
]
NEGATIVE = [
    "The kettle broke after two days, a waste of money.",
    "Terrible headphones, the left side stopped working.",
    "These shoes hurt my feet and the sole came off.",
    "The battery dies within an hour, very disappointing.",
    "The blender leaks and smells of burning plastic.",
    "Boring book, I gave up after three chapters.",
    "The jacket ripped at the seam the first time I wore it.",
    "The lamp arrived cracked and the seller ignored me.",
    "Awful coffee maker, the coffee tastes burnt.",
    "The tent leaked all night and the poles bent.",
    "The towels shed lint everywhere and feel rough.",
    "The board game was missing pieces, my kids cried.",
    "The knife is dull and the handle wobbles.",
    "The camera is blurry and the app keeps crashing.",
    "This chair is wobbly and the cushion went flat.",
    "The vacuum is loud and barely picks up dust.",
    "The mug chipped in the dishwasher on day one.",
    "One star, the charger overheats and smells bad.",
    "The backpack strap snapped on the first trip.",
    "Poor value, the speaker crackles at any volume.",
]


def make_sentiment_dataset(rows: int = 24, seed: int = 11) -> list[dict[str, str]]:
    """`rows` reviews (at most 40), half positive and half negative, in a shuffled order fixed by `seed`."""
    if not 2 <= rows <= len(POSITIVE) + len(NEGATIVE):
        raise ValueError(f"rows must be between 2 and {len(POSITIVE) + len(NEGATIVE)}")
    chosen = [{"review": text, "sentiment": "positive"} for text in POSITIVE[: (rows + 1) // 2]]
    chosen += [{"review": text, "sentiment": "negative"} for text in NEGATIVE[: rows // 2]]
    random.Random(seed).shuffle(chosen)
    return chosen


def model_config(lm_url: str, api_key: str = "local", max_tokens: int = 48) -> dict[str, Any]:
    """The real model at `lm_url`: greedy, `max_tokens` per answer, free."""
    return {
        "name": MODEL_NAME,
        "base_url": lm_url,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "extra": {"api_key": api_key, "input_cost_per_token": 0, "output_cost_per_token": 0},
    }


def sentiment_job(lm_url: str, *, rows: int = 24, api_key: str = "local", **overrides: Any) -> dict[str, Any]:
    """A POST /run body: BootstrapFewShot with `predict` on `rows` reviews (`overrides` replace fields)."""
    payload: dict[str, Any] = {
        "username": "demo",
        "name": "real-model sentiment",
        "module_name": "predict",
        "signature_code": SENTIMENT_SIGNATURE_CODE,
        "metric_code": SENTIMENT_METRIC_CODE,
        "optimizer_name": "bootstrap",
        "optimizer_kwargs": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
        "compile_kwargs": {},
        "dataset": make_sentiment_dataset(rows),
        "column_mapping": {"inputs": {"review": "review"}, "outputs": {"sentiment": "sentiment"}},
        "split_fractions": {"train": 0.5, "val": 0.2, "test": 0.3},
        "shuffle": True,
        "seed": 11,
        "num_threads": 2,
        "model_config": model_config(lm_url, api_key),
    }
    payload.update(copy.deepcopy(overrides))
    return payload
