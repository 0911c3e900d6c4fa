"""A collector's cursor file: the end of the last window it produced, written atomically after Kafka confirmed
the window's events. A restart resumes at that window; a crash between producing and saving re-produces the
window with the same event ids (deduplicated downstream), so no window is lost and none is counted twice."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any


class Cursor:
    def __init__(self, path: Path):
        self.path = path
        self.state: dict[str, Any] = {}
        if path.exists():
            try:
                self.state = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"cursor file {path} is not JSON ({exc}); fix or delete it") from None
            if not isinstance(self.state, dict):
                raise ValueError(f"cursor file {path} must hold a JSON object")

    @property
    def position(self) -> dt.datetime | None:
        raw = self.state.get("window_end")
        return dt.datetime.fromisoformat(raw) if raw else None

    def advance(self, window_end: dt.datetime, **extra: Any) -> None:
        """Record that every window up to `window_end` is produced and confirmed."""
        self.state.update(extra, window_end=window_end.isoformat())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as handle:
            json.dump(self.state, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
