"""Split a long answer into messages under a platform's length limit.

Cuts prefer a paragraph break (blank line outside a code fence), then a line break, and only split a line
when it alone is too long. A cut inside a ``` fence closes the fence at the end of the chunk and reopens it
(with the same info string, e.g. ```python) at the start of the next one, so every chunk renders correctly.
"""

from __future__ import annotations

FENCE = "```"
_CLOSER = "\n" + FENCE


def _is_fence(line: str) -> bool:
    return line.lstrip().startswith(FENCE)


def _fence_states(lines: list[str]) -> list[str | None]:
    """For each line, the opening fence line in effect *before* it (None outside a fence)."""
    states: list[str | None] = []
    current: str | None = None
    for line in lines:
        states.append(current)
        if _is_fence(line):
            current = None if current is not None else line.strip()
    states.append(current)
    return states


def _hard_split(line: str, budget: int) -> tuple[str, str]:
    """Split one over-long line at the last space that fits, else at `budget` characters."""
    cut = line.rfind(" ", 0, budget + 1)
    if cut <= budget // 2:
        return line[:budget], line[budget:]
    return line[:cut], line[cut + 1 :]


def split_message(text: str, limit: int) -> list[str]:
    """Chunks of at most `limit` characters, in order; empty input gives no chunks."""
    if limit < 16:
        raise ValueError("limit too small to hold a code fence")
    text = text.strip("\n")
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    lines = text.split("\n")
    chunks: list[str] = []
    start = 0
    while start < len(lines):
        states = _fence_states(lines)
        opener = states[start]
        prefix = [opener] if opener else []
        if opener and len(opener) + len(_CLOSER) + 2 > limit // 2:
            prefix = []  # a pathological info string: drop the reopening rather than loop forever
        size = len("\n".join(prefix)) if prefix else -1  # -1: the first line needs no separator
        end = start
        best_paragraph = -1
        while end < len(lines):
            closing = len(_CLOSER) if states[end + 1] is not None else 0
            if size + 1 + len(lines[end]) + closing > limit:
                break
            size += 1 + len(lines[end])
            end += 1
            if end < len(lines) and lines[end - 1].strip() == "" and states[end] is None:
                best_paragraph = end
        if end == start:
            closing = len(_CLOSER) if states[start] is not None or _is_fence(lines[start]) else 0
            budget = max(1, limit - (size + 1) - closing)
            head, tail = _hard_split(lines[start], budget)
            lines[start : start + 1] = [head, tail]
            end = start + 1
        elif end < len(lines) and best_paragraph > start:
            paragraph_size = len("\n".join(prefix + lines[start:best_paragraph]))
            if paragraph_size >= limit // 2:
                end = best_paragraph
        body = "\n".join(prefix + lines[start:end]).rstrip()
        if _fence_states(lines)[end] is not None:
            body += _CLOSER
        if body.strip():
            chunks.append(body)
        start = end
        while start < len(lines) and lines[start].strip() == "" and _fence_states(lines)[start] is None:
            start += 1
    return chunks
