"""Self-contained offline HTML report of a study run directory: `python -m reports RUN_DIR` -> RUN_DIR/report.html."""

from reports.html import build_report, render_report

__all__ = ["build_report", "render_report"]
