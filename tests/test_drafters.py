"""The drafters and the draft-length controller of speculative decoding, alone."""
from __future__ import annotations

from preheat.engine.speculative.draft_length import DraftLength
from preheat.engine.speculative.ngram_index import NgramIndex
from preheat.engine.speculative.suffix_index import SuffixIndex


def test_ngram_index_drafts_what_followed_the_tails_latest_occurrence():
    index = NgramIndex((3, 2))
    tokens = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    # [1, 2, 3] occurred at 0 and 6; the latest is followed by 7, 8, 1, ...
    assert index.propose(tokens, 4) == (3, [7, 8, 1, 2])


def test_ngram_index_grows_with_the_list_and_prefers_longer_matches():
    index = NgramIndex((3, 2))
    tokens = [5, 6, 7, 8, 6, 7]
    assert index.propose(tokens, 3) == (2, [8, 6, 7])  # only [6, 7] matches
    tokens += [8]
    assert index.propose(tokens, 2) == (3, [6, 7])  # [6, 7, 8] now matches at 1..3
    assert index.propose([1, 2, 3], 2) == (0, [])  # another list: nothing of it matches


def test_ngram_index_never_matches_the_tail_with_itself():
    index = NgramIndex((2,))
    assert index.propose([1, 2, 3, 4], 4) == (0, [])


def test_suffix_index_drafts_from_a_tenants_earlier_reply_only():
    index = SuffixIndex(lengths=(3,), context_tokens=2)
    index.add("a", prompt=[90, 91, 92, 93], output=[10, 11, 12, 13, 14])
    # the reply's opening follows the prompt's last tokens
    assert index.propose("a", [7, 92, 93, 10], 3) == (3, [11, 12, 13])
    assert index.propose("a", [11, 12, 13], 5) == (3, [14])
    assert index.propose("b", [92, 93, 10], 3) == (0, [])


def test_suffix_index_keeps_each_tenant_within_its_token_budget():
    index = SuffixIndex(lengths=(2,), tenant_tokens=10, context_tokens=0)
    index.add("a", [], [1, 2, 3, 4, 5, 6])
    index.add("a", [], [21, 22, 23, 24, 25, 26])  # 12 tokens: the first reply goes
    assert index.num_tokens == 6
    assert index.propose("a", [1, 2], 2) == (0, [])
    assert index.propose("a", [21, 22], 2) == (2, [23, 24])
    # the dropped reply's entries went with it
    assert all(doc_id != 0 for doc_id, _ in index._tenants["a"].after.values())


def test_suffix_index_drops_the_least_recently_used_tenant():
    index = SuffixIndex(lengths=(2,), max_tenants=2, context_tokens=0)
    index.add("a", [], [1, 2, 3])
    index.add("b", [], [1, 2, 4])
    index.propose("a", [1, 2], 1)  # a is used again: b is now the oldest
    index.add("c", [], [1, 2, 5])
    assert index.propose("a", [1, 2], 1) == (2, [3])
    assert index.propose("b", [1, 2], 1) == (0, [])


def test_draft_length_grows_after_whole_acceptance_and_falls_after_a_miss():
    length = DraftLength(limit=8)
    assert length.allowed() == 4
    length.observe(4, 4)
    assert length.allowed() == 8
    length.observe(8, 8)
    assert length.allowed() == 8  # the limit
    length.observe(8, 2)
    assert length.allowed() == 3  # just past what was accepted


def test_draft_length_pauses_after_drafts_that_keep_failing():
    length = DraftLength(limit=8)
    for _ in range(DraftLength.MISSES_BEFORE_PAUSE):
        length.observe(length.allowed(), 0)
    paused = [length.allowed() for _ in range(8)]
    assert paused == [0] * 8 and length.allowed() > 0
    for _ in range(DraftLength.MISSES_BEFORE_PAUSE):  # failing again: a longer pause
        length.observe(length.allowed(), 0)
    assert [length.allowed() for _ in range(16)] == [0] * 16
    length.observe(length.allowed(), 1)  # an accepted token resets the pause
    for _ in range(DraftLength.MISSES_BEFORE_PAUSE):
        length.observe(length.allowed(), 0)
    assert [length.allowed() for _ in range(9)].count(0) == 8
