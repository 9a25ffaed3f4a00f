"""The LRU memo behind the MD and minimum caches (`atomray.priors.recent`)."""

import numpy as np

from atomray.priors.recent import Recent


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


def test_both_bounds_apply_and_the_byte_count_follows_what_leaves():
    """max_items and max_bytes together: whichever is exceeded evicts; evicted values stop counting."""
    memo, calls = Recent(max_items=3, max_bytes=64), []
    for key in "abc":
        memo.get(key, counted(calls, np.zeros(2)))  # 16 bytes each: the item bound applies first
    memo.get("d", counted(calls, np.zeros(2)))
    assert len(memo) == 3 and memo._bytes == 48
    memo.get("e", counted(calls, np.zeros(6)))  # 48 bytes: 96 held would exceed 64, two small ones leave
    assert len(memo) == 2 and memo._bytes == 64
    memo.get("a", counted(calls, np.zeros(2)))  # "a" left with the first eviction: computed again
    assert len(calls) == 6
