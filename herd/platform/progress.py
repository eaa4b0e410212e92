"""Live terminal progress for a flow run (rich): each step's state, elapsed time, live progress and where to look.

On a terminal it is a live table (step, state, elapsed, progress, where); elsewhere (CI logs, tests) it prints one
line per state change and one per progress report. A failing step's traceback is printed in full, once. Nothing
else is printed here: Ray's own output is routed to log files by the runtime.
"""

from __future__ import annotations

import time
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

_STYLE = {"pending": "dim", "queued": "dim", "running": "yellow", "waiting": "magenta", "done": "green",
          "reused": "cyan", "failed": "bold red", "refused": "bold red", "skipped": "dim"}
_ENDED = ("done", "failed", "reused", "skipped", "refused")


class Progress:
    def __init__(self, steps: list[str], enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.state = {s: ["pending", None, None, ""] for s in steps}  # state, started, ended, where
        self.work: dict[str, str] = {}  # step -> live progress text ("20/30  loss 3.1  1,200 tok/s")
        self._live: Live | None = None

    def header(self, **where: str) -> None:
        """Where the record goes: ``tracking`` (MLflow's URI), ``store`` (artifacts), ``ui`` (the `herd ui`
        command that serves a sqlite store; an http tracking URI is its own UI)."""
        if not self.enabled:
            return
        tracking = where.get("tracking") or ""
        ui = where.get("ui") or "herd ui"
        hint = "" if tracking.startswith(("http://", "https://")) else f"  (open it with `{ui}`)"
        self.console.print(f"MLflow         {tracking}{hint}", soft_wrap=True, highlight=False)
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
        if state in ("running", "waiting") and row[1] is None:
            row[1] = now
        if state in _ENDED:
            row[2] = now
        changed = row[0] != state
        row[0] = state
        if where is not None:
            row[3] = where
        if self.enabled and self._live is None and changed:
            self.console.print(f"[{_STYLE.get(state, '')}]{state:8}[/] {step}  {self._elapsed(row)}  {row[3]}",
                               soft_wrap=True, highlight=False)
        self.refresh()

    def task(self, step: str, done: int, total: int, info: str = "") -> None:
        """Live progress of a running step (a training step count, loss, tokens/s)."""
        if step not in self.state or self.state[step][0] != "running":  # a late report of a finished step
            return
        text = f"{done}/{total}  {info}".strip() if total else info
        self.work[step] = text
        if self.enabled and self._live is None:
            self.console.print(f"{'':8} {step}  {self._elapsed(self.state[step])}  {text}", soft_wrap=True,
                               highlight=False, markup=False)
        self.refresh()

    def failure(self, step: str, traceback_text: str) -> None:
        """Print a failed step's full traceback (above the live table on a terminal)."""
        if not self.enabled:
            return
        self.console.print(Text(f"--- {step} failed; traceback:", style="bold red"))
        self.console.print(Text(traceback_text.rstrip()), soft_wrap=True, highlight=False)

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
        for col in ("step", "state", "elapsed", "progress", "where"):
            t.add_column(col)
        for step, row in self.state.items():
            t.add_row(step, f"[{_STYLE.get(row[0], '')}]{row[0]}[/]", self._elapsed(row),
                      Text(self.work.get(step, "") if row[0] == "running" else ""), Text(row[3]))
        return t
