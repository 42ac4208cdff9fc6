"""A helper thread that lives as long as a `with` block: what the sampler and the CPU exporter run in."""
from __future__ import annotations

import threading


class Background:
    """Runs `self.loop()` in a daemon thread from `with` entry; at exit sets `self.stopping` and joins it."""

    def __init__(self, name: str, join_timeout: float = 30.0) -> None:
        self.stopping = threading.Event()
        self._join_timeout = join_timeout
        self._thread = threading.Thread(target=self.loop, name=name, daemon=True)

    def loop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._thread.join(self._join_timeout)
