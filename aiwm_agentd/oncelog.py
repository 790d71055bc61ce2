"""Log a failure the first time it is seen, and again only when it changes or after a recovery."""

from __future__ import annotations

import logging
from typing import Any


class OnceLog:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: dict[str, str] = {}

    def failure(self, topic: str, signature: str, level: int, message: str, *args: Any) -> bool:
        if self._last.get(topic) == signature:
            self._logger.debug(message, *args)
            return False
        self._last[topic] = signature
        self._logger.log(level, message, *args)
        return True

    def recovered(self, topic: str, message: str, *args: Any) -> None:
        if self._last.pop(topic, None) is not None and message:
            self._logger.info(message, *args)
