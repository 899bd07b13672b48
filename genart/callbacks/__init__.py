"""Callbacks record a run's trajectory; the loop calls them and knows nothing else about them.

They come from two config groups, each a dict of named `_target_`s (`callbacks`, then `logger`),
built in that order; `callbacks.stats=null` switches one off. A callback shares what it made with
the ones after it by adding it to the report it receives (`report["video"]`), never through each
other's files.
"""

from __future__ import annotations

from collections.abc import Mapping

from genart.errors import UserError

GROUPS = ("callbacks", "logger")  # built in this order: loggers see what the callbacks made


class Callback:
    """on_start(run) once, on_step(report) after every step, on_end(report) after the last, and
    on_abort() instead of on_end when the run stops with an error."""

    def on_start(self, run) -> None:
        pass

    def on_step(self, report: dict) -> None:
        pass

    def on_end(self, report: dict) -> None:
        pass

    def on_abort(self) -> None:
        pass


def callback_nodes(cfg: Mapping) -> list:
    """The config nodes to build, in order: every named entry of each group; a null entry is off."""
    nodes = []
    for group in GROUPS:
        entries = cfg.get(group) or {}
        if not isinstance(entries, Mapping):
            raise UserError(
                f"{group} is {entries!r}, not a dict of named callbacks: pick an option "
                f"({group}=<file in conf/{group}/>) or set one entry ({group}.<name>.<key>=…)."
            )
        for name, node in entries.items():
            if node is None:
                continue
            if not isinstance(node, Mapping) or "_target_" not in node:
                raise UserError(
                    f"{group}.{name} is {node!r}, not a callback: give it a node with a _target_ "
                    f"(as in conf/{group}/), or switch it off with {group}.{name}=null."
                )
            nodes.append(node)
    return nodes
