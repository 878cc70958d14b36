"""Small inline SVG plots for the report page: a setting's seeds as dots around mean±std at each learning rate of
its sweep (the lr sweep curve through the means), and its dev curve per epoch and seed. Written as text, with no
plotting library: hundreds of them cost milliseconds, and they stay sharp at any zoom. Every label is escaped.

>>> svg = sweep_svg([(1e-4, [70.0, 72.0], 0), (1e-3, [75.0, 76.0, 74.0], 1)], chosen=1e-3, ylabel="RTE acc")
>>> svg.startswith("<svg") and svg.count('class="seed"') == 5 and "1 diverged" in svg
True
>>> "&lt;b&gt;" in curve_svg({0: [(1, 60.0), (2, 70.0)]}, ylabel="<b>")
True
"""

import math
from html import escape

WIDTH, HEIGHT = 300, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 12, 34
SEED_COLOR, MEAN_COLOR, CHOSEN_COLOR = "#7a8da8", "#1f4e8c", "#c0392b"


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _ticks(low: float, high: float, n: int = 4) -> list[float]:
    """About n round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


class _Frame:
    """Maps data to pixels over a plot area with a y range padded around the values."""

    def __init__(self, values: list[float], n_x: int, x_range: tuple[float, float] | None = None):
        finite = [v for v in values if math.isfinite(v)] or [0.0]
        low, high = min(finite), max(finite)
        pad = max((high - low) * 0.12, 0.5)
        self.low, self.high = low - pad, high + pad
        self.x_range = x_range or (0, max(n_x - 1, 1))
        self.n_x = n_x

    def x(self, value: float) -> float:
        a, b = self.x_range
        span = (b - a) or 1
        inner = WIDTH - LEFT - RIGHT - 24
        return LEFT + 12 + (value - a) / span * inner

    def y(self, value: float) -> float:
        return TOP + (self.high - value) / (self.high - self.low) * (HEIGHT - TOP - BOTTOM)


def _axes(frame: _Frame, xticks: list[tuple[float, str]], xlabel: str, ylabel: str) -> list[str]:
    parts = [f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" class="axis"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" class="axis"/>']
    for value in _ticks(frame.low, frame.high):
        y = frame.y(value)
        parts.append(f'<line x1="{LEFT - 3}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{LEFT - 5}" y="{y + 3:.1f}" text-anchor="end">{escape(f"{value:g}")}</text>')
    for x, label in xticks:
        parts.append(f'<text x="{frame.x(x):.1f}" y="{HEIGHT - BOTTOM + 13}" text-anchor="middle">{escape(label)}'
                     f'</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" class="label">'
                 f'{escape(xlabel)}</text>')
    parts.append(f'<text x="11" y="{(TOP + HEIGHT - BOTTOM) / 2:.0f}" text-anchor="middle" class="label" '
                 f'transform="rotate(-90 11 {(TOP + HEIGHT - BOTTOM) / 2:.0f})">{escape(ylabel)}</text>')
    return parts


def _svg(parts: list[str], title: str) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(parts) + "</svg>")


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, std


def sweep_svg(per_lr: list[tuple[float, list[float], int]], chosen: float | None, ylabel: str) -> str:
    """Per learning rate (in the order given; `per_lr`: (lr, finite seed scores, diverged seeds)): each seed a dot,
    the mean±std (ddof=1) as a bar, the means joined (the lr sweep curve); the chosen lr in red."""
    values = [v for _, scores, _ in per_lr for v in scores]
    frame = _Frame(values, len(per_lr))
    parts = _axes(frame, [(i, f"{lr:g}") for i, (lr, _, _) in enumerate(per_lr)], "learning rate", ylabel)
    means = []
    for i, (lr, scores, diverged) in enumerate(per_lr):
        mean, std = _mean_std(scores)
        is_chosen = chosen is not None and math.isclose(lr, chosen, rel_tol=1e-9)
        color = CHOSEN_COLOR if is_chosen else MEAN_COLOR
        x = frame.x(i)
        for k, v in enumerate(scores):
            dx = (k - (len(scores) - 1) / 2) * 3.0
            parts.append(f'<circle class="seed" cx="{x + dx:.1f}" cy="{frame.y(v):.1f}" r="2.6" fill="{SEED_COLOR}">'
                         f'<title>lr {lr:g}: {_fmt(v)}</title></circle>')
        if math.isfinite(mean):
            means.append((x, frame.y(mean)))
            parts.append(f'<line x1="{x + 9:.1f}" y1="{frame.y(mean - std):.1f}" x2="{x + 9:.1f}" '
                         f'y2="{frame.y(mean + std):.1f}" stroke="{color}" stroke-width="1.5"/>'
                         f'<rect class="mean" x="{x + 6:.1f}" y="{frame.y(mean) - 1.5:.1f}" width="6" height="3" '
                         f'fill="{color}"><title>lr {lr:g}: {_fmt(mean)}±{_fmt(std)} ({len(scores)} seeds'
                         f'{", chosen" if is_chosen else ""})</title></rect>')
        if diverged:
            parts.append(f'<text x="{x:.1f}" y="{TOP + 8}" text-anchor="middle" class="warn">{diverged} diverged'
                         f'</text>')
    if len(means) > 1:
        points = " ".join(f"{x + 9:.1f},{y:.1f}" for x, y in means)
        parts.insert(2, f'<polyline points="{points}" fill="none" stroke="{MEAN_COLOR}" stroke-opacity="0.5"/>')
    return _svg(parts, f"{ylabel} per learning rate: seeds and mean±std")


def curve_svg(per_seed: dict[int, list[tuple[int, float]]], ylabel: str, diverged=()) -> str:
    """The dev score per epoch, one thin line per seed (dotted: a seed in `diverged`), the mean over the other
    seeds bold."""
    epochs = sorted({e for points in per_seed.values() for e, _ in points})
    values = [v for points in per_seed.values() for _, v in points]
    frame = _Frame(values, len(epochs), (min(epochs, default=0), max(epochs, default=1)))
    step = -(-len(epochs) // 10)  # at most about 10 labels: 20 epochs would overlap
    ticks = [e for i, e in enumerate(epochs) if i % step == 0 or e == epochs[-1]]
    parts = _axes(frame, [(e, str(e)) for e in ticks], "epoch", ylabel)
    for seed, points in sorted(per_seed.items()):
        finite = [(e, v) for e, v in points if math.isfinite(v)]
        if not finite:
            continue
        dash = ' stroke-dasharray="3 2"' if seed in diverged else ""
        path = " ".join(f"{frame.x(e):.1f},{frame.y(v):.1f}" for e, v in finite)
        parts.append(f'<polyline class="seed" points="{path}" fill="none" stroke="{SEED_COLOR}" stroke-width="1"'
                     f'{dash}><title>seed {seed}{" (diverged)" if seed in diverged else ""}</title></polyline>')
    mean = []
    for e in epochs:
        m, _ = _mean_std([v for s, points in per_seed.items() if s not in diverged for x, v in points if x == e])
        if math.isfinite(m):
            mean.append((e, m))
    if mean:
        path = " ".join(f"{frame.x(e):.1f},{frame.y(v):.1f}" for e, v in mean)
        parts.append(f'<polyline class="mean" points="{path}" fill="none" stroke="{MEAN_COLOR}" stroke-width="2.2">'
                     f'<title>mean over {len(per_seed) - len(set(diverged) & set(per_seed))} seeds</title></polyline>')
    return _svg(parts, f"{ylabel} per epoch and seed")
