from __future__ import annotations

import random

import pytest

from aiwm_agentd.platforms.split import split_message


def _prose(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon"]) for _ in range(words))


def _code(lines: int, lang: str = "python") -> str:
    return f"```{lang}\n" + "\n".join(f"value_{i} = compute({i})  # step {i}" for i in range(lines)) + "\n```"


def _content_lines(chunks: list[str]) -> list[str]:
    """Every non-fence, non-blank line of the chunks, in order."""
    return [line for chunk in chunks for line in chunk.split("\n") if line.strip() and not line.startswith("```")]


def test_short_text_is_one_chunk_and_blank_is_none() -> None:
    assert split_message("hello\n", 2000) == ["hello"]
    assert split_message("  \n\n", 2000) == []


def test_long_prose_splits_on_paragraph_boundaries_under_limit() -> None:
    paragraphs = [_prose(60, seed) for seed in range(30)]
    chunks = split_message("\n\n".join(paragraphs), 2000)
    assert len(chunks) > 1
    assert all(len(c) <= 2000 for c in chunks)
    # No paragraph is cut in the middle: every chunk is a run of whole paragraphs.
    for chunk in chunks:
        assert all(p in paragraphs for p in chunk.split("\n\n"))


def test_code_fences_are_closed_and_reopened_with_their_language() -> None:
    text = "Intro paragraph.\n\n" + _code(200, "rust") + "\n\nDone."
    chunks = split_message(text, 2000)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert len(chunk) <= 2000
        fences = [line for line in chunk.split("\n") if line.startswith("```")]
        assert len(fences) % 2 == 0, chunk
    assert chunks[1].startswith("```rust\n")
    assert _content_lines(chunks) == _content_lines([text])


@pytest.mark.parametrize("limit", [2000, 4096])
def test_nine_thousand_chars_with_fences(limit: int) -> None:
    parts = []
    for i in range(12):
        parts.append(_prose(40, i))
        if i % 3 == 0:
            parts.append(_code(12 + i))
    text = "\n\n".join(parts)
    while len(text) < 9000:
        text += "\n\n" + _prose(40, len(text))
    chunks = split_message(text, limit)
    assert len(chunks) >= 9000 // limit
    assert all(len(c) <= limit for c in chunks)
    assert all(sum(line.startswith("```") for line in c.split("\n")) % 2 == 0 for c in chunks)
    assert _content_lines(chunks) == _content_lines([text])


def test_over_long_line_is_split_at_spaces_and_inside_a_fence() -> None:
    line = _prose(1500)
    chunks = split_message(line, 2000)
    assert all(len(c) <= 2000 for c in chunks)
    assert " ".join(chunks).split() == line.split()
    fenced = split_message("```\n" + "x" * 5000 + "\n```", 2000)
    assert all(len(c) <= 2000 and c.startswith("```\n") and c.endswith("\n```") for c in fenced)
    assert "".join(c[4:-4] for c in fenced) == "x" * 5000
