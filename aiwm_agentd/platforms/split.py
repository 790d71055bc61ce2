"""Split a long answer into messages under a platform's length limit, in one pass, with a cap on their number.

Cuts prefer a paragraph break (blank line outside a code fence), then a line break, and only split a line
when it alone is too long. A cut inside a ``` fence closes the fence at the end of the chunk and reopens it
(with the same info string, e.g. ```python) at the start of the next one, so every chunk renders correctly.

The work is linear in the text: each line's fence-ness is computed once, a chunk is built from a cursor
(line, column, fence in effect) without touching what lies beyond it, and an over-long line is consumed by
column offsets rather than by re-slicing its remainder. A 1 MB answer used to cost seconds of CPU here.

At most `max_chunks` messages are produced: a chat is no place for a 250-message answer, and the platforms
rate-limit a chat to a few messages per second (Discord) or ~20 a minute (Telegram groups). When more would be
needed, the last message ends with a note that says how much was not sent.
"""

from __future__ import annotations

import re
from typing import NamedTuple

FENCE = "```"
_CLOSER = "\n" + FENCE
_PARAGRAPH = "\n\n"
MIN_LIMIT = 16

# 10 messages: 20 KB on Discord (2000 chars each), 40 KB on Telegram (4096) -- far more than a chat answer
# anyone reads, yet under Telegram's ~20 messages a minute in a group and two Discord rate-limit windows.
MAX_CHUNKS = 10

_FENCE_RE = re.compile(r"\s*```")
_BLANK_RE = re.compile(r"\s*\Z")
# How many alternative cut points a hard split tries so that the next piece does not begin with ``` (which
# would render as a fence); past that the input is adversarial and the cut is taken as it is.
_FENCE_SAFE_TRIES = 16


def _is_fence(line: str) -> bool:
    """A line that opens or closes a code fence (leading whitespace allowed)."""
    return _FENCE_RE.match(line) is not None


def _truncation_note(remaining: int) -> str:
    return f"[… answer truncated: {remaining:,} more characters not sent]"


_SHORT_TRUNCATION_NOTE = "[… truncated]"


class _Cursor(NamedTuple):
    """Where the unsent text starts: a line, a column inside it (after a hard split), the fence in effect."""

    line: int
    column: int
    opener: str | None


def _reopen_line(opener: str | None, limit: int) -> str | None:
    """The fence line that reopens a cut code block; a bare fence when the info string is absurdly long."""
    if opener is None:
        return None
    return opener if len(opener) + len(_CLOSER) + 2 <= limit // 2 else FENCE


def _starts_like_fence(line: str, column: int) -> bool:
    return _FENCE_RE.match(line, column) is not None


def _hard_split(line: str, start: int, budget: int) -> tuple[int, int]:
    """Where to cut `line[start:]` so that at most `budget` characters stay: (head end, tail start).

    The last space in the second half of the budget is preferred (the space itself is dropped), else the cut
    falls at `budget` characters; either way a cut that leaves the tail beginning with ``` is avoided.
    """
    end = start + budget
    floor = start + budget // 2 + 1
    cut = line.rfind(" ", floor, end + 1)
    for _ in range(_FENCE_SAFE_TRIES):
        if cut == -1 or not _starts_like_fence(line, cut + 1):
            break
        cut = line.rfind(" ", floor, cut)
    if cut != -1 and not _starts_like_fence(line, cut + 1):
        return cut, cut + 1
    for pos in range(end, max(start, end - _FENCE_SAFE_TRIES), -1):
        if not _starts_like_fence(line, pos):
            return pos, pos
    return end, end


def _skip_blank_lines(lines: list[str], cursor: _Cursor) -> _Cursor:
    """Blank lines between chunks outside a fence are not sent (they would start a message with space)."""
    if cursor.opener is not None:
        return cursor
    line, column = cursor.line, cursor.column
    while line < len(lines) and _BLANK_RE.match(lines[line], column):
        line, column = line + 1, 0
    return _Cursor(line, column, None)


def _next_chunk(lines: list[str], fences: list[bool], cursor: _Cursor, limit: int) -> tuple[str, _Cursor]:
    """One chunk of at most `limit` characters from `cursor`, and the cursor after it."""
    reopen = _reopen_line(cursor.opener, limit)
    parts = [reopen] if reopen else []
    size = len(reopen) if reopen else -1  # -1: the first line needs no separator
    state = cursor.opener
    index, column = cursor.line, cursor.column
    has_content = False
    paragraph: tuple[int, int, int] | None = None  # (parts kept, next line, size) at the last paragraph break
    while index < len(lines):
        line = lines[index]
        fence = column == 0 and fences[index]
        after = (None if state is not None else line.strip()) if fence else state
        closing = len(_CLOSER) if after is not None else 0
        if size + 1 + len(line) - column + closing > limit:
            break
        parts.append(line[column:] if column else line)
        size += 1 + len(line) - column
        blank = not fence and _BLANK_RE.match(line, column) is not None
        state, index, column = after, index + 1, 0
        if not blank:
            has_content = True
        elif state is None and index < len(lines):
            paragraph = (len(parts), index, size)
    else:
        return _finish(parts, state), _Cursor(index, 0, state)

    line = lines[index]
    fence = column == 0 and fences[index]
    if not has_content:
        # Nothing but blank lines fits before this line: it alone is too long, so it is cut to fill the chunk.
        closing = len(_CLOSER) if state is not None or fence else 0
        budget = limit - (size + 1) - closing
        if budget >= 1:
            head_end, tail_start = _hard_split(line, column, budget)
            parts.append(line[column:head_end])
            if fence:
                state = None if state is not None else line.strip()
            if tail_start >= len(line):
                return _finish(parts, state), _Cursor(index + 1, 0, state)
            return _finish(parts, state), _Cursor(index, tail_start, state)
    elif paragraph is not None and paragraph[2] >= limit // 2:
        kept, index, _ = paragraph
        return _finish(parts[:kept], None), _Cursor(index, 0, None)
    return _finish(parts, state), _Cursor(index, column, state)


def _finish(parts: list[str], state: str | None) -> str:
    body = "\n".join(parts).rstrip()
    return body + _CLOSER if state is not None else body


def _unsent_characters(lines: list[str], cursor: _Cursor, total: int) -> int:
    sent = sum(len(line) + 1 for line in lines[: cursor.line]) + cursor.column
    return max(0, total - sent)


def _truncated_last_chunk(
    lines: list[str], fences: list[bool], cursor: _Cursor, limit: int, total: int
) -> str | None:
    """The final chunk with room kept for the truncation note; None when the limit is too small for one."""
    for note in (_truncation_note(total), _SHORT_TRUNCATION_NOTE):
        room = limit - len(_PARAGRAPH) - len(note)
        if room < MIN_LIMIT:
            continue
        body, after = _next_chunk(lines, fences, cursor, room)
        after = _skip_blank_lines(lines, after)
        unsent = _unsent_characters(lines, after, total)
        if note != _SHORT_TRUNCATION_NOTE:
            note = _truncation_note(unsent)  # never longer than the one room was kept for
        return body + _PARAGRAPH + note if body.strip() else note
    return None


def split_message(text: str, limit: int, max_chunks: int = MAX_CHUNKS) -> list[str]:
    """Chunks of at most `limit` characters, in order; empty input gives no chunks.

    When the text needs more than `max_chunks` chunks, the last one ends with a truncation note (limits under
    ~31 characters have no room for it and are just cut).
    """
    if limit < MIN_LIMIT:
        raise ValueError("limit too small to hold a code fence")
    if max_chunks < 1:
        raise ValueError("max_chunks must be at least 1")
    text = text.strip("\n")
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    lines = text.split("\n")
    fences = [_is_fence(line) for line in lines]
    chunks: list[str] = []
    cursor = _Cursor(0, 0, None)
    while cursor.line < len(lines):
        body, after = _next_chunk(lines, fences, cursor, limit)
        after = _skip_blank_lines(lines, after)
        if len(chunks) == max_chunks - 1 and after.line < len(lines):
            last = _truncated_last_chunk(lines, fences, cursor, limit, len(text))
            chunks.append(last if last is not None else body)
            break
        if body.strip():
            chunks.append(body)
        cursor = after
    return chunks
