"""Callbacks record a run's trajectory; the loop calls them and knows nothing else about them."""

from __future__ import annotations


class Callback:
    """on_start(run) once, on_step(state) after every step, on_end(state) after the last."""

    def on_start(self, run) -> None:
        pass

    def on_step(self, state: dict) -> None:
        pass

    def on_end(self, state: dict) -> None:
        pass
