"""A JSON file the service re-reads when it changes: the experiments file, the merchandising rules.

:class:`WatchedFile` looks at the file (a ``stat``) at most every ``check_seconds`` and parses it
again when its modification time or size changed. A missing file is the empty value. A file that
is unreadable or invalid is refused as a whole, with the reason in :attr:`WatchedFile.error` (shown
by ``/readyz``, logged), and the last valid value stays in force; so switching something on or off
is an edit of the file, never a restart.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# How often the service looks at a watched file (a stat call) for a change.
CHECK_SECONDS = 0.25


class WatchedFile(Generic[T]):
    """``parse(json)`` of the file at ``path``, re-read when it changes (see the module docstring).

    ``parse`` raises ``ValueError`` (with the reason) for an invalid file; ``empty`` is the value of
    a missing file; ``what`` names the file in log lines.
    """

    def __init__(
        self, path: Path, parse: Callable[[Any], T], empty: T, *, what: str, check_seconds: float = CHECK_SECONDS
    ) -> None:
        self.path = Path(path)
        self.check_seconds = check_seconds
        self.value: T = empty
        self.error: str | None = None
        self._parse, self._empty, self._what = parse, empty, what
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        self._lock = threading.Lock()
        self.reload()

    def current(self) -> T:
        """The value in force (the file is looked at first when ``check_seconds`` have passed)."""
        if time.monotonic() - self._checked >= self.check_seconds:
            self.reload()
        return self.value

    def reload(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                if self._stamp is not None:
                    log.info("%s %s removed", self._what, self.path)
                self.value, self.error, self._stamp = self._empty, None, None
                return
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self.value = self._parse(json.loads(self.path.read_text()))
                self.error = None
                log.info("%s read from %s", self._what, self.path)
            except (OSError, ValueError) as exc:  # parse errors and JSON errors are ValueErrors
                self.error = f"{self.path}: {exc}"
                log.error("%s refused, the previous definition stays in force: %s", self._what, self.error)
