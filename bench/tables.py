"""Rich's Console and Table when rich is installed, else plain-text stand-ins with the same calls.

The benchmarks run on accelerator machines that may hold only torch / transformers / peft
(bench/gpu_check.sh): their tables must print there too.
"""

from __future__ import annotations

from typing import Any

try:  # pragma: no cover - which branch runs depends on the machine
    from rich.console import Console
    from rich.table import Table
except ImportError:  # pragma: no cover

    class Table:  # type: ignore[no-redef]
        """The subset of rich.table.Table the benchmarks use, printed as aligned text."""

        def __init__(self, title: str = "", **_: Any) -> None:
            self.title, self.columns, self.rows = title, [], []

        def add_column(self, name: str, **_: Any) -> None:
            self.columns.append(str(name))

        def add_row(self, *cells: Any, **_: Any) -> None:
            self.rows.append([str(c) for c in cells])

        def __str__(self) -> str:
            widths = [
                max([len(c)] + [len(r[i]) for r in self.rows if i < len(r)])
                for i, c in enumerate(self.columns)
            ]
            line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
            rule = "  ".join("-" * w for w in widths)
            return "\n".join([self.title, line(self.columns), rule, *map(line, self.rows)])

    class Console:  # type: ignore[no-redef]
        def print(self, *items: Any, **_: Any) -> None:
            print(*items, flush=True)


__all__ = ["Console", "Table"]
