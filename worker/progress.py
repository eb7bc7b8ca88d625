"""Progress bars on stderr for the CLI, one per stage, fed by the pipeline's callback."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class StageBars:
    """Context manager whose ``update(stage, fraction, message)`` drives rich progress bars."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.fields[stage]:>9}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            disable=not self.enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StageBars:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, stage: str, fraction: float, message: str) -> None:
        if stage not in self._tasks:
            for other in self._tasks.values():  # earlier stages are done
                self._progress.update(other, completed=1.0)
            self._tasks[stage] = self._progress.add_task(message, total=1.0, stage=stage)
        self._progress.update(
            self._tasks[stage], completed=max(0.0, min(1.0, fraction)), description=message
        )
