"""Sentence splitting and packing never lose, add or reorder a character."""

from __future__ import annotations

import pytest

from lmpipe.text.sentences import pack, sentences


def words(text: str) -> int:
    return len(text.split())


def test_sentences_join_back_exactly():
    text = 'One. Two!  Three? "Four." (Five.)\n\nSix… seven。八！ end'
    parts = sentences(text)
    assert "".join(parts) == text
    assert parts[:3] == ["One. ", "Two!  ", "Three? "]
    assert len(parts) >= 7


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 50])
def test_pack_respects_the_limit_and_joins_back(limit):
    text = "A short one. " + "This sentence is quite a bit longer than the limit allows. " * 3 + "Supercalifragilistic!"
    pieces = pack(text, words, limit)
    assert "".join(pieces) == text
    assert all(words(p) <= limit for p in pieces)
    assert all(p for p in pieces)


def test_pack_keeps_whole_sentences_when_they_fit():
    text = "Alpha beta. Gamma delta. Epsilon zeta."
    assert pack(text, words, 4) == ["Alpha beta. Gamma delta. ", "Epsilon zeta."]
    assert pack(text, words, 100) == [text]


def test_a_word_longer_than_the_limit_is_cut_between_characters():
    pieces = pack("abcdefghij", len, 3)
    assert pieces == ["abc", "def", "ghi", "j"]
