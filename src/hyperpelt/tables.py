"""Plain-text tables for the terminal: the lowest layer, so any command's module can print one."""

from __future__ import annotations


def text_table(
    header: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...] = ()
) -> list[str]:
    """Columns padded to their widest cell (those in ``right`` aligned right), under a header and a rule."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row) -> str:
        cells = [f"{c:>{w}}" if i in right else f"{c:<{w}}" for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return [line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(line, rows)]
