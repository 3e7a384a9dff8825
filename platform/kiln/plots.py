"""Figures drawn off-screen (matplotlib's Agg backend: servers and workers have no display)
and written as PNG. Every plot Kiln draws goes through here.

    figure, axis = plots.subplots(figsize=(6, 3.5))
    axis.plot(epochs, values)
    data = plots.png(figure)          # bytes; the figure is closed
    plots.save(figure, "latency.png")
"""

import io
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported when first drawn (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(*args: Any, **kwargs: Any) -> Any:
    return pyplot().subplots(*args, **kwargs)


def png(figure: Any, **savefig: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **{"dpi": 100, **savefig})
    pyplot().close(figure)
    return buffer.getvalue()


def save(figure: Any, path: str | Path) -> None:
    Path(path).write_bytes(png(figure))
