"""The synthetic world: clips of coloured shapes with two or three events in order, and captions.

Designed so that methods have something to disagree on:
- every clip has 2-3 events (a shape appears, leaves, or moves left/right), one time segment each;
- captions describe the whole clip or only part of it (partial relevance, as in real data);
- order words ("then", "after", "first") make the meaning depend on the order of events, and the
  test gallery holds "twins": clips with the same events in another order;
- several captions per training video, with synonyms, so that the text side has to generalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CANVAS = 64  # pixels, square
FPS = 5
SECONDS = 8
COLORS = {
    "red": (220, 45, 45),
    "green": (40, 185, 70),
    "blue": (50, 95, 235),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
ACTIONS = ("appears", "leaves", "moves left", "moves right")
VERBS = {
    "appears": ("appears", "shows up", "comes into view"),
    "leaves": ("leaves", "disappears", "goes away"),
    "moves left": ("moves left", "slides to the left", "moves to the left"),
    "moves right": ("moves right", "slides to the right", "moves to the right"),
}
LANES = (14, 32, 50)  # y centres
LEFT, CENTRE, RIGHT = 14, 32, 50
RADIUS = 9


@dataclass(frozen=True)
class Event:
    color: str
    shape: str
    action: str
    lane: int  # index into LANES


@dataclass(frozen=True)
class Clip:
    events: tuple[Event, ...]
    background: tuple[int, int, int]
    rest_x: tuple[int, ...]  # x of each object while it is not moving


def random_clip(rng: np.random.Generator) -> Clip:
    count = int(rng.choice([2, 3], p=[0.5, 0.5]))
    objects = rng.choice(len(COLORS) * len(SHAPES), size=count, replace=False)
    lanes = rng.permutation(len(LANES))[:count]
    events = tuple(
        Event(list(COLORS)[o // len(SHAPES)], SHAPES[o % len(SHAPES)], str(rng.choice(ACTIONS)), int(lane))
        for o, lane in zip(objects, lanes)
    )
    background = tuple(int(v) for v in rng.integers(20, 90, size=3))
    rest_x = tuple(int(rng.choice([LEFT, CENTRE, RIGHT])) for _ in events)
    return Clip(events, background, rest_x)


def reordered(clip: Clip, rng: np.random.Generator) -> Clip:
    """The same events in another order (a hard negative for order-blind methods)."""
    order = list(range(len(clip.events)))
    while order == list(range(len(clip.events))):
        order = list(rng.permutation(len(clip.events)))
    return Clip(tuple(clip.events[i] for i in order), clip.background, tuple(clip.rest_x[i] for i in order))


def _position(event: Event, rest_x: int, progress: float) -> float | None:
    """x of an object at `progress` through its own event segment (<0 before, >1 after); None if absent."""
    p = min(max(progress, 0.0), 1.0)
    if event.action == "appears":
        return None if progress < 0.5 else rest_x
    if event.action == "leaves":
        if progress <= 0:
            return rest_x
        x = rest_x + p * (CANVAS + RADIUS - rest_x)  # slides out to the right
        return None if p >= 1 else x
    start, end = (RIGHT, LEFT) if event.action == "moves left" else (LEFT, RIGHT)
    return start + p * (end - start)


_YS, _XS = np.mgrid[0:CANVAS, 0:CANVAS]


@lru_cache(maxsize=4096)
def _inside(shape: str, cx: float, cy: float) -> np.ndarray:
    """The pixels a shape centred at (cx, cy) covers (cached: the stills reuse 27 placements)."""
    ys, xs = _YS, _XS
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= RADIUS**2
    if shape == "square":
        half = RADIUS * 0.85
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    depth = ys - (cy - RADIUS)  # triangle pointing up
    return (depth >= 0) & (ys <= cy + RADIUS) & (np.abs(xs - cx) <= depth * 0.6)


def _draw(image: np.ndarray, shape: str, color: tuple[int, int, int], cx: float, cy: float) -> None:
    image[_inside(shape, cx, cy)] = color


def render(clip: Clip) -> np.ndarray:
    """uint8 (SECONDS * FPS, CANVAS, CANVAS, 3)."""
    frames = np.empty((SECONDS * FPS, CANVAS, CANVAS, 3), dtype=np.uint8)
    segment = SECONDS * FPS / len(clip.events)
    for t in range(frames.shape[0]):
        image = frames[t]
        image[:] = clip.background
        for i, (event, rest_x) in enumerate(zip(clip.events, clip.rest_x)):
            x = _position(event, rest_x, (t + 0.5 - i * segment) / segment)
            if x is not None:
                _draw(image, event.shape, COLORS[event.color], x, LANES[event.lane])
    return frames


def render_still(objects: list[tuple[str, str, int, int]], background: tuple[int, int, int]) -> np.ndarray:
    """One frame with static objects (color, shape, x, lane): the backbone's pre-training images."""
    image = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    image[:] = background
    for color, shape, x, lane in objects:
        _draw(image, shape, COLORS[color], x, LANES[lane])
    return image


def _phrase(event: Event, rng: np.random.Generator) -> str:
    return f"a {event.color} {event.shape} {rng.choice(VERBS[event.action])}"


def caption(clip: Clip, kind: str, rng: np.random.Generator) -> str:
    """One caption of the given kind: full, after, partial, pair, objects."""
    phrases = [_phrase(e, rng) for e in clip.events]
    if kind == "full":
        lead = "first " if rng.random() < 0.3 else ""
        return lead + ", then ".join(phrases)
    if kind == "after":  # the order stated backwards: "B after A"
        i = int(rng.integers(0, len(phrases) - 1))
        return f"{phrases[i + 1]} after {phrases[i]}"
    if kind == "pair":  # two events in order, possibly skipping one
        i, j = sorted(rng.choice(len(phrases), size=2, replace=False))
        return f"{phrases[i]} and then {phrases[j]}"
    if kind == "partial":
        return phrases[int(rng.integers(0, len(phrases)))]
    if kind == "objects":
        names = [f"a {e.color} {e.shape}" for e in clip.events]
        return " and ".join(rng.permutation(names))
    raise ValueError(kind)


TRAIN_KINDS = ("full", "full", "after", "pair", "partial", "objects")
TEST_KINDS = ("full", "full", "full", "after", "pair")  # a single test caption mostly says the whole story


def still_sample(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A pre-training image with 1-3 objects and its short caption (objects, sometimes a position)."""
    count = int(rng.integers(1, 4))
    objects = rng.choice(len(COLORS) * len(SHAPES), size=count, replace=False)
    lanes = rng.permutation(len(LANES))[:count]
    placed, names = [], []
    for o, lane in zip(objects, lanes):
        color, shape = list(COLORS)[o // len(SHAPES)], SHAPES[o % len(SHAPES)]
        x = int(rng.choice([LEFT, CENTRE, RIGHT]))
        placed.append((color, shape, x, int(lane)))
        where = {LEFT: " on the left", CENTRE: " in the middle", RIGHT: " on the right"}[x]
        names.append(f"a {color} {shape}" + (where if rng.random() < 0.3 else ""))
    background = tuple(int(v) for v in rng.integers(20, 90, size=3))
    return render_still(placed, background), " and ".join(names)
