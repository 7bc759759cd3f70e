"""Incremental detokenizing: UTF-8 safe pieces, and stop strings that never leak."""

from __future__ import annotations

import pytest

from steering.demo.toy import build_tokenizer
from steering.frontend.detokenize import REPLACEMENT, TextStream


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _stream(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, stop)
    pieces = [stream.push([i]) for i in _ids(tokenizer, text)]
    pieces.append(stream.flush())
    return pieces, stream


def test_pieces_never_split_a_character(tokenizer) -> None:
    text = "Café, naïve: 東京 😀 and the sea."
    ids = _ids(tokenizer, text)
    assert len(ids) > len(text.encode()) // 4  # multi-byte characters span several tokens
    assert any(REPLACEMENT in tokenizer.decode(ids[:n]) for n in range(1, len(ids)))
    pieces, stream = _stream(tokenizer, text)
    assert "".join(pieces) == text == stream.text
    assert all(REPLACEMENT not in piece for piece in pieces)


def test_special_tokens_are_skipped(tokenizer) -> None:
    stream = TextStream(tokenizer)
    ids = tokenizer("the sea").input_ids  # begins with <bos>
    assert stream.push(ids) + stream.flush() == "the sea"


def test_stop_string_across_tokens_ends_the_text_before_it(tokenizer) -> None:
    pieces, stream = _stream(tokenizer, "The sea was calm. STOP and the boats drifted", ("STOP",))
    assert stream.stopped
    assert "".join(pieces) == "The sea was calm. "
    assert all("S" not in piece for piece in pieces)  # not even the start of it leaked


def test_earliest_of_several_stops_wins(tokenizer) -> None:
    pieces, stream = _stream(tokenizer, "alpha beta gamma delta", ("delta", "beta"))
    assert stream.stopped and "".join(pieces) == "alpha "


def test_held_back_prefix_is_released_when_it_is_not_a_stop(tokenizer) -> None:
    stream = TextStream(tokenizer, ("seaweed",))
    assert stream.push(_ids(tokenizer, "the")) == "the"
    assert stream.push(_ids(tokenizer, " sea")) == " "  # "sea" could still become "seaweed"
    assert stream.push(_ids(tokenizer, " was")) == "sea wa"  # a final "s" could begin it too
    assert stream.push(_ids(tokenizer, " calm")) == "s calm"
    assert not stream.stopped and stream.text == "the sea was calm"


def test_after_a_stop_nothing_more_comes(tokenizer) -> None:
    stream = TextStream(tokenizer, ("calm",))
    stream.push(_ids(tokenizer, "the sea was calm"))
    assert stream.stopped
    assert stream.push(_ids(tokenizer, " and blue")) == ""
    assert stream.flush() == ""
    assert stream.text == "the sea was "


def test_long_streams_equal_the_full_decode(tokenizer) -> None:
    text = " ".join(["Café, naïve: 東京 😀 and the sea was calm; the boats drifted."] * 30)
    ids = _ids(tokenizer, text)
    stream = TextStream(tokenizer)
    out = "".join(stream.push(ids[i : i + 3]) for i in range(0, len(ids), 3)) + stream.flush()
    assert out == tokenizer.decode(ids) == text


def test_decoding_work_per_push_stays_bounded(tokenizer) -> None:
    calls: list[int] = []
    original = tokenizer.decode

    def counting(ids, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(ids))
        return original(ids, **kw)

    tokenizer.decode = counting
    try:
        stream = TextStream(tokenizer)
        for i in _ids(tokenizer, "the sea was calm and blue " * 40):
            stream.push([i])
    finally:
        tokenizer.decode = original
    assert max(calls) <= 16  # a few ids of context plus the new ones, never the whole text
