from __future__ import annotations

import random
import re

import pytest

from aiwm_agentd.platforms import split as split_module
from aiwm_agentd.platforms.split import MAX_CHUNKS, split_message


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


# --- Properties over random texts, the chunk cap, and the work done ------------------------------------------

_WORDS = ["alpha", "beta", "gamma", "`x`", "delta", "epsilonepsilon", "*bold*", "a"]
_NOTE_RE = re.compile(r"\[… answer truncated: ([\d,]+) more characters not sent\]")
_ANY_NOTE_RE = re.compile(r"\[… (answer truncated: ([\d,]+) more characters not sent|truncated)\]")


def _random_text(rng: random.Random) -> str:
    def line(max_words: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, max_words)))

    parts = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.random()
        if kind < 0.25:
            opener = rng.choice(["```", "```python", "  ```rust", "```sh"])
            body = "\n".join(line(rng.choice([6, 30, 400])) for _ in range(rng.randint(0, 30)))
            parts.append(f"{opener}\n{body}\n```")
        elif kind < 0.35:
            parts.append(line(800))  # an over-long line
        else:
            parts.append("\n".join(line(20) for _ in range(rng.randint(1, 8))))
    return rng.choice(["\n\n", "\n", "\n\n\n", "\n \n"]).join(parts)


def _fence_lines(chunk: str) -> list[str]:
    return [line for line in chunk.split("\n") if line.lstrip().startswith("```")]


def _stream(text: str) -> str:
    """The text without fence lines and whitespace: what must survive splitting, in order."""
    kept = [line for line in text.split("\n") if not line.lstrip().startswith("```")]
    return re.sub(r"\s+", "", "".join(kept))


@pytest.mark.parametrize("seed", range(150))
def test_random_texts_keep_limit_content_and_fences(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng)
    limit = rng.choice([40, 100, 500, 2000, 4096])
    max_chunks = rng.choice([1, 3, 10, 10_000])
    chunks = split_message(text, limit, max_chunks)
    assert 1 <= len(chunks) <= max_chunks
    notes = [m for chunk in chunks if (m := _ANY_NOTE_RE.search(chunk))]
    for chunk in chunks:
        assert chunk.strip() and len(chunk) <= limit, chunk
        assert len(_fence_lines(chunk)) % 2 == 0, chunk
    original = text.strip("\n")
    sent = _stream("\n".join(_ANY_NOTE_RE.sub("", chunk) for chunk in chunks))
    if not notes:
        assert sent == _stream(original)
        return
    # Only the last chunk carries the note, and its count is exactly what was left out.
    assert len(notes) == 1 and chunks[-1].endswith(notes[0].group(0)) and len(chunks) == max_chunks
    if notes[0].group(2) is None:  # the short note, for limits too small to hold the count
        assert limit < 70 and _stream(original).startswith(sent) and sent != _stream(original)
        return
    unsent = int(notes[0].group(2).replace(",", ""))
    assert 0 < unsent < len(original)
    assert sent + _stream(original[len(original) - unsent:]) == _stream(original)


def test_answer_over_the_cap_ends_with_the_truncation_note() -> None:
    paragraphs = [_prose(60, seed) for seed in range(200)]
    text = "\n\n".join(paragraphs)
    chunks = split_message(text, 2000)
    assert len(chunks) == MAX_CHUNKS == 10
    assert all(len(c) <= 2000 for c in chunks)
    match = _NOTE_RE.search(chunks[-1])
    assert match is not None and chunks[-1].endswith("\n\n" + match.group(0))
    assert not any(_NOTE_RE.search(c) for c in chunks[:-1])
    unsent = int(match.group(1).replace(",", ""))
    assert text[-unsent:].split("\n\n")[0] in paragraphs  # the cut fell between paragraphs
    assert "," in match.group(1)  # thousands separators: easier to read at a glance
    sent = "\n\n".join(_NOTE_RE.sub("", c).strip() for c in chunks)
    assert _stream(sent + text[-unsent:]) == _stream(text)


def test_truncation_inside_a_code_block_keeps_the_fence_balanced() -> None:
    text = _code(2000, "python")
    chunks = split_message(text, 500, max_chunks=3)
    assert len(chunks) == 3
    last = chunks[-1]
    assert len(last) <= 500 and last.startswith("```python\n")
    assert len(_fence_lines(last)) == 2
    # The note stays outside the code block, so it renders as text.
    assert re.search(r"\n```\n\n\[… answer truncated: [\d,]+ more characters not sent\]$", last)


def test_exactly_max_chunks_needs_no_note() -> None:
    text = "\n\n".join("p" * 90 for _ in range(5))
    chunks = split_message(text, 100, max_chunks=5)
    assert chunks == ["p" * 90] * 5


def test_tiny_limits_still_cut_and_keep_fences_balanced() -> None:
    # Under 31 characters the note does not fit; the cap still holds and every chunk stays balanced.
    chunks = split_message("```\n" + "\n".join(f"line {i}" for i in range(100)) + "\n```", 16, max_chunks=4)
    assert len(chunks) == 4
    assert all(len(c) <= 16 and len(_fence_lines(c)) % 2 == 0 for c in chunks)
    with pytest.raises(ValueError):
        split_message("x", 15)
    with pytest.raises(ValueError):
        split_message("x", 100, max_chunks=0)


def test_a_cut_never_starts_the_next_piece_with_a_fence() -> None:
    # "word ```tail": cutting at the space before ``` would make the next message open a code block.
    line = " ".join(["word"] * 10 + ["```tail"] + ["more"] * 30)
    budget_cut = line.index("```") + 2
    chunks = split_message(line, budget_cut + 4)
    assert all(not c.lstrip().startswith("```") for c in chunks)
    assert " ".join(chunks).split() == line.split()


def test_each_line_is_classified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old splitter re-scanned every line for fences on every chunk (quadratic); now it is one pass."""
    calls = 0
    real = split_module._is_fence

    def counting(line: str) -> bool:
        nonlocal calls
        calls += 1
        return real(line)

    monkeypatch.setattr(split_module, "_is_fence", counting)
    text = "\n\n".join(_prose(40, seed) + "\n" + _code(8) for seed in range(40))
    lines = text.count("\n") + 1
    chunks = split_message(text, 2000)
    assert len(chunks) >= 8
    assert calls == lines

    calls = 0
    big = "\n".join(_prose(12, seed) for seed in range(20_000))
    assert len(split_message(big, 2000, max_chunks=100_000)) > 300
    assert calls == 20_000
