"""comparison.png: val top-1 and train loss per epoch, every run on the same axes (the seeds
of an arm faintly, their mean bold), drawn with Pillow, which the project already needs,
rather than another plotting dependency."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from prep.atomic import atomic_file

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def draw_panel(draw, box, series: list[tuple], title: str, font) -> None:
    """One line chart in box (x0, y0, x1, y1): series of (name, xs, ys, colour, faint); a
    faint series is drawn thin and pale, without a legend entry."""
    x0, y0, x1, y1 = box
    left, bottom = x0 + 60, y1 - 40
    top, right = y0 + 30, x1 - 10
    draw.text((x0 + 60, y0 + 5), title, fill="black", font=font)
    points = [
        (x, y) for _, xs, ys, *_ in series for x, y in zip(xs, ys, strict=True) if y is not None
    ]
    if not points:
        draw.text((left + 10, top + 10), "no data", fill="black", font=font)
        return
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax, ymin = ymax + 0.5, ymin - 0.5
    pad = 0.05 * (ymax - ymin)
    ymin, ymax = ymin - pad, ymax + pad

    def to_px(x, y):
        return (
            left + (x - xmin) / (xmax - xmin) * (right - left),
            bottom - (y - ymin) / (ymax - ymin) * (bottom - top),
        )

    draw.rectangle((left, top, right, bottom), outline="black")
    for i in range(5):  # y ticks
        value = ymin + i * (ymax - ymin) / 4
        _, py = to_px(xmin, value)
        draw.line((left - 4, py, left, py), fill="black")
        draw.line((left, py, right, py), fill=(225, 225, 225))
        draw.text((x0 + 2, py - 7), f"{value:.3g}", fill="black", font=font)
    for i in range(5):  # x ticks
        value = xmin + i * (xmax - xmin) / 4
        px, _ = to_px(value, ymin)
        draw.line((px, bottom, px, bottom + 4), fill="black")
        draw.text((px - 8, bottom + 6), f"{value:.3g}", fill="black", font=font)
    draw.text(((left + right) / 2 - 15, bottom + 22), "epoch", fill="black", font=font)
    legend = 0
    for name, xs, ys, colour, faint in sorted(series, key=lambda s: not s[4]):  # faint first
        line = [to_px(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        pale = tuple(c + (255 - c) * 3 // 5 for c in colour)
        if len(line) > 1:
            draw.line(line, fill=pale if faint else colour, width=1 if faint else 2)
        if faint:
            continue
        for px, py in line:
            draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colour)
        y = top + 12 + 16 * legend
        draw.line((right - 150, y, right - 130, y), fill=colour, width=3)
        draw.text((right - 125, y - 7), name, fill="black", font=font)
        legend += 1


def curves(arms: dict[str, list[dict]], key: str, scale: float) -> list[tuple]:
    """Plot series of one history column: every arm in its colour; with several seeds each
    seed faintly and their mean (over the epochs all of them have) in full."""
    series = []
    for k, (name, runs) in enumerate(arms.items()):
        colour = COLOURS[k % len(COLOURS)]
        lines = [
            {h["epoch"]: None if h[key] is None else scale * h[key] for h in r["history"]}
            for r in runs
        ]
        if len(runs) == 1:
            series.append((name, list(lines[0]), list(lines[0].values()), colour, False))
            continue
        for line in lines:
            series.append((None, list(line), list(line.values()), colour, True))
        shared = sorted(
            set.intersection(*(set(e for e, v in ln.items() if v is not None) for ln in lines))
        )
        mean = [sum(ln[e] for ln in lines) / len(lines) for e in shared]
        series.append((f"{name} (mean of {len(runs)})", shared, mean, colour, False))
    return series


def plot(arms: dict[str, list[dict]], path: Path) -> None:
    image = Image.new("RGB", (1200, 460), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw_panel(draw, (0, 0, 600, 460), curves(arms, "val_top1", 100), "val top-1 (%)", font)
    draw_panel(draw, (600, 0, 1200, 460), curves(arms, "train_loss", 1), "train loss", font)
    with atomic_file(path) as f:
        image.save(f, format="PNG")
