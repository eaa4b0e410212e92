"""Live terminal progress for a flow run (rich): each step's state, elapsed time, and where to look.

On a terminal it is a live table; elsewhere (CI logs, tests) it prints one line per state change.
"""

from __future__ import annotations

import time
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.table import Table

_STYLE = {"pending": "dim", "running": "yellow", "done": "green", "reused": "cyan", "failed": "bold red",
          "skipped": "dim"}


class Progress:
    def __init__(self, steps: list[str], enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.state = {s: ["pending", None, None, ""] for s in steps}  # state, started, ended, where
        self._live: Live | None = None

    def header(self, **where: str) -> None:
        if not self.enabled:
            return
        self.console.print(f"MLflow         {where.get('tracking')}  (open it with `herd ui`)", soft_wrap=True)
        self.console.print(f"Artifacts      {where.get('store')}", soft_wrap=True)

    def ray(self, dashboard: str, token: str, log: str = "") -> None:
        """Where Ray is: its dashboard (the login token comes from `herd token`, never printed here: output lands
        in logs; ``token`` is the file, for callers that want it) and the file Ray's own output goes to."""
        if self.enabled and dashboard:
            self.console.print(f"Ray dashboard  {dashboard}  (login token: run `herd token`)", soft_wrap=True,
                               highlight=False)
        if self.enabled and log:
            self.console.print(f"Ray logs       {log}", soft_wrap=True, highlight=False)

    def __enter__(self) -> Self:
        if self.enabled and self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None

    def update(self, step: str, state: str, where: str | None = None) -> None:
        row = self.state[step]
        now = time.monotonic()
        if state == "running" and row[1] is None:
            row[1] = now
        if state in ("done", "failed", "reused", "skipped"):
            row[2] = now
        changed = row[0] != state
        row[0] = state
        if where is not None:
            row[3] = where
        if self.enabled and self._live is None and changed:
            self.console.print(f"[{_STYLE.get(state, '')}]{state:8}[/] {step}  {self._elapsed(row)}  {row[3]}",
                               soft_wrap=True, highlight=False)
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    @staticmethod
    def _elapsed(row: list) -> str:
        if row[1] is None:
            return ""
        return f"{(row[2] or time.monotonic()) - row[1]:6.1f}s"

    def _table(self) -> Table:
        t = Table(show_header=True, header_style="bold", box=None)
        for col in ("step", "state", "elapsed", "where"):
            t.add_column(col)
        for step, row in self.state.items():
            t.add_row(step, f"[{_STYLE.get(row[0], '')}]{row[0]}[/]", self._elapsed(row), row[3])
        return t
