"""Per-server timeline of a bench run as a PNG (Pillow only): one lane per server, one bar per prompt."""

import math
from collections.abc import Sequence
from pathlib import Path

from _common import NodeRun, Phase
from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
_WIDTH = 1600
_LEFT, _RIGHT = 150, 30
_LANE_H, _LANE_GAP = 40, 8
_PANEL_HEAD, _PANEL_GAP, _AXIS_H = 34, 24, 26
_PAGE: Color = (252, 252, 252)
_INK: Color = (30, 30, 30)
_MUTED: Color = (120, 120, 120)
_GRID: Color = (226, 226, 226)
_QUEUED: Color = (200, 200, 200)
_RUN: tuple[Color, Color] = ((52, 110, 190), (96, 160, 230))  # alternate so neighbouring bars stay apart
_NODE: tuple[Color, Color] = ((30, 140, 70), (90, 190, 120))
_SETUP: Color = (255, 236, 214)
_WRAPUP: Color = (236, 226, 250)


def draw_timeline(
    phases: Sequence[Phase], runs: dict[str, list[NodeRun]], lanes: Sequence[tuple[str, str]], path: Path,
    *, title: str,
) -> Path:  # fmt: skip
    """Draw each phase as a panel of `lanes` ((server name, label)), on one shared time scale from its call."""
    horizon = max(phase.makespan_s for phase in phases)
    panel_h = _PANEL_HEAD + len(lanes) * (_LANE_H + _LANE_GAP) + _AXIS_H
    height = 86 + len(phases) * (panel_h + _PANEL_GAP) + 40
    image = Image.new("RGB", (_WIDTH, height), _PAGE)
    draw = ImageDraw.Draw(image)
    draw.text((_LEFT, 12), title, fill=_INK, font=_font(18))
    _legend(draw, 42)
    top = 86
    for phase in phases:
        _panel(draw, phase, runs.get(phase.name, []), lanes, top, horizon)
        top += panel_h + _PANEL_GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _panel(
    draw: ImageDraw.ImageDraw, phase: Phase, runs: list[NodeRun], lanes: Sequence[tuple[str, str]], top: int,
    horizon: float,
) -> None:  # fmt: skip
    scale = (_WIDTH - _LEFT - _RIGHT) / horizon

    def x(at: float) -> float:
        return _LEFT + (at - phase.called_at) * scale

    lanes_top = top + _PANEL_HEAD
    lanes_bottom = lanes_top + len(lanes) * (_LANE_H + _LANE_GAP)
    # Set-up (call -> first submit) and wrap-up (last finish -> return) shaded behind the lanes.
    draw.rectangle((x(phase.called_at), lanes_top, x(phase.first_submit), lanes_bottom), fill=_SETUP)
    draw.rectangle((x(phase.last_finish), lanes_top, x(phase.returned_at), lanes_bottom), fill=_WRAPUP)
    _axis(draw, lanes_top, lanes_bottom, horizon, scale)
    heading = (f"{phase.name}: makespan {phase.makespan_s:.2f} s, first submit -> last finish {phase.span_s:.2f} s,"
               f" {len(phase.prompts)} prompts")  # fmt: skip
    draw.text((_LEFT, top + 8), heading, fill=_INK, font=_font(15))
    for number, (server, label) in enumerate(lanes):
        lane_top = lanes_top + number * (_LANE_H + _LANE_GAP)
        draw.text((10, lane_top + 12), label, fill=_INK, font=_font(13))
        draw.rectangle((_LEFT, lane_top, _WIDTH - _RIGHT, lane_top + _LANE_H), outline=_GRID)
        prompts = sorted((p for p in phase.prompts if p.server == server), key=lambda p: p.started_at)
        for index, prompt in enumerate(prompts):
            _bar(draw, x(prompt.queued_at), x(prompt.started_at), lane_top + 3, lane_top + 11, _QUEUED)
            _bar(draw, x(prompt.started_at), x(prompt.finished_at), lane_top + 13, lane_top + 29, _RUN[index % 2])
        node_runs = sorted((run for run in runs if run.server == server), key=lambda run: run.start)
        for index, run in enumerate(node_runs):
            _bar(draw, x(run.start), x(run.end), lane_top + 31, lane_top + 37, _NODE[index % 2])


def _bar(draw: ImageDraw.ImageDraw, left: float, right: float, top: int, bottom: int, color: Color) -> None:
    # Bars of less than a pixel still show, so very short prompts are not lost.
    draw.rectangle((left, top, max(right - 1, left), bottom), fill=color)


def _axis(draw: ImageDraw.ImageDraw, top: int, bottom: int, horizon: float, scale: float) -> None:
    step = _tick_step(horizon)
    for tick in range(math.floor(horizon / step) + 1):
        at = _LEFT + tick * step * scale
        draw.line((at, top, at, bottom), fill=_GRID)
        draw.text((at - 8, bottom + 6), f"{tick * step:g}s", fill=_MUTED, font=_font(12))


def _tick_step(horizon: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300):
        if horizon / step <= 25:
            return step
    return 600


def _legend(draw: ImageDraw.ImageDraw, top: int) -> None:
    items = [
        (_QUEUED, "queued in ComfyUI (POST answered -> first event)"),
        (_RUN[0], "running, client's view (first event -> /history read)"),
        (_NODE[0], "Delay node executing (server's own journal)"),
        (_SETUP, "set-up: call -> first submit"),
        (_WRAPUP, "wrap-up: last finish -> return"),
    ]
    left = _LEFT
    for color, text in items:
        width = 28 + int(draw.textlength(text, font=_font(12)))
        if left + width > _WIDTH - _RIGHT:  # wrap onto a second row
            left, top = _LEFT, top + 18
        draw.rectangle((left, top + 2, left + 14, top + 14), fill=color, outline=_MUTED)
        draw.text((left + 20, top), text, fill=_INK, font=_font(12))
        left += width


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
