"""The LRU memo behind the MD and minimum caches (`atomray.recent`)."""

import numpy as np

from atomray.recent import Recent


def counted(calls, value):
    def compute():
        calls.append(1)
        return value
    return compute


def test_a_recent_key_is_computed_once_and_the_least_recent_leaves_first():
    memo, calls = Recent(max_items=2), []
    for key in ("a", "b", "a", "c"):  # "a" was used after "b": "b" leaves when "c" arrives
        memo.get(key, counted(calls, np.zeros(1)))
    assert len(calls) == 3 and len(memo) == 2
    memo.get("a", counted(calls, np.zeros(1)))
    assert len(calls) == 3
    memo.get("b", counted(calls, np.zeros(1)))
    assert len(calls) == 4


def test_the_byte_budget_bounds_what_is_held_but_keeps_the_newest():
    memo, calls = Recent(max_bytes=16), []
    memo.get("small", counted(calls, np.zeros(2)))  # 16 bytes: fits
    memo.get("big", counted(calls, np.zeros(4)))    # 32 bytes: over the budget alone, still kept
    assert len(memo) == 1
    memo.get("big", counted(calls, np.zeros(4)))
    assert len(calls) == 2


def test_a_failed_answer_is_remembered_too():
    """None (MMFF94 could not type the molecule) is an answer: asking again must not recompute it."""
    memo, calls = Recent(max_items=4), []
    assert memo.get("x", counted(calls, None)) is None
    assert memo.get("x", counted(calls, None)) is None
    assert len(calls) == 1
