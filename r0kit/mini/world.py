"""The mini world: a procedural grammar of shapes in scenes, and its renderer.

A *scene* is a background and one to three objects; each object has a shape,
a colour, a size and a position. Three kinds of prompt describe scenes:

``single``    "a large red circle on the left" (size and position may be omitted)
``relation``  "a red circle left of a blue square" (left of, right of, above, below)
``count``     "two green triangles" (two or three objects of one colour and shape)

Images are drawn with PIL at :data:`SUPERSAMPLE` times the resolution and
reduced with a box filter, so edges are antialiased; backgrounds are muted
tones with a gentle linear gradient, so that no object colour is ever a
background colour.

Held-out split: the colour-shape pairs in :data:`HELD_OUT_PAIRS` never appear
in a ``"train"`` scene. A ``"heldout"`` scene contains at least one of them, so
evaluation on it measures compositional generalization: every word was seen in
training, never in that combination. An ``"all"`` scene draws from every pair:
the world's rewards, VAE and feature network learn from those, the base UNet
only from ``"train"`` scenes (see :mod:`r0kit.mini.build`).

Everything here is deterministic given a :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw

#: Side of the world's images in pixels.
RESOLUTION = 32
#: Rendering happens at this multiple of the resolution, then a box filter reduces it (antialiasing).
SUPERSAMPLE = 4

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
#: Object colours, saturated, as 0-255 RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 55),
    "cyan": (30, 195, 205),
    "blue": (40, 70, 215),
    "purple": (145, 45, 195),
}
SIZES: dict[str, float] = {"small": 4.0, "large": 6.5}  # object "radius" in pixels at RESOLUTION 32
#: Named positions: centre of the object as a fraction of the image side, (x, y), y down.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNTS: dict[int, str] = {2: "two", 3: "three"}
#: Colour-shape pairs that never appear in a training scene.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("yellow", "square"), ("cyan", "circle"), ("orange", "diamond")}
)

#: Farthest point of each shape from its centre, in radii (see _shape_points).
_EXTENT = {"circle": 1.0, "square": 0.85 * math.sqrt(2), "triangle": math.hypot(1.0, 0.8), "diamond": 1.0}

Kind = Literal["single", "relation", "count"]
Split = Literal["train", "heldout", "all"]
KIND_WEIGHTS: dict[str, float] = {"single": 0.5, "relation": 0.3, "count": 0.2}


@dataclass(frozen=True)
class Obj:
    """One object: shape, colour, size name, and centre ``(x, y)`` as fractions of the image side."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    def radius(self, resolution: int = RESOLUTION) -> float:
        return SIZES[self.size] * resolution / 32

    def extent(self, resolution: int = RESOLUTION) -> float:
        """Distance from the centre to the farthest point of the shape (corners reach past the radius)."""
        return self.radius(resolution) * _EXTENT[self.shape]


@dataclass(frozen=True)
class Background:
    """A muted base colour (0-1 RGB) and a linear gradient of ``amplitude`` along ``angle`` (radians)."""

    colour: tuple[float, float, float]
    amplitude: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """What a prompt states and the objects that realise it.

    :ivar kind: ``single``, ``relation`` or ``count``.
    :ivar objects: the objects drawn (for ``relation``: subject first, then the reference).
    :ivar stated: which attributes the prompt states, for ``single``: a subset of ``{"size", "position"}``.
    :ivar position: the named position of a ``single`` object, when it has one.
    :ivar relation: for ``relation``, one of :data:`RELATIONS`.
    """

    kind: Kind
    objects: tuple[Obj, ...]
    background: Background
    stated: frozenset[str] = field(default_factory=frozenset)
    position: str | None = None
    relation: str | None = None

    @property
    def prompt(self) -> str:
        return prompt_of(self)

    @property
    def pairs(self) -> set[tuple[str, str]]:
        return {o.pair for o in self.objects}

    @property
    def held_out(self) -> bool:
        """Whether the scene shows a pair of :data:`HELD_OUT_PAIRS` (it is then no ``"train"`` scene)."""
        return not self.pairs.isdisjoint(HELD_OUT_PAIRS)


# ---------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------
def _plural(shape: str) -> str:
    return shape + "s"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt_of(scene: Scene) -> str:
    """The prompt text of a scene (the grammar is in the module docstring)."""
    if scene.kind == "single":
        o = scene.objects[0]
        words = []
        if "size" in scene.stated:
            words.append(o.size)
        words += [o.colour, o.shape]
        if "position" in scene.stated and scene.position:
            words.append(POSITION_PHRASES[scene.position])
        return " ".join([_article(words[0])] + words)
    if scene.kind == "relation":
        a, b = scene.objects
        return f"{_article(a.colour)} {a.colour} {a.shape} {scene.relation} {_article(b.colour)} {b.colour} {b.shape}"
    o = scene.objects[0]
    return f"{COUNTS[len(scene.objects)]} {o.colour} {_plural(o.shape)}"


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = {"a", "an", "on", "the", "at", "in", "of", "left", "right", "above", "below"}
    words |= set(SHAPES) | {_plural(s) for s in SHAPES} | set(COLOURS) | set(SIZES) | set(COUNTS.values())
    for phrase in POSITION_PHRASES.values():
        words |= set(phrase.split())
    return sorted(words)


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------
def _pairs(split: Split) -> list[tuple[str, str]]:
    allp = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in allp if p not in HELD_OUT_PAIRS] if split == "train" else allp


def _background(rng: np.random.Generator) -> Background:
    level = float(rng.choice([rng.uniform(0.08, 0.38), rng.uniform(0.62, 0.92)]))
    tint = rng.normal(0.0, 0.04, size=3)
    colour = tuple(float(np.clip(level + t, 0.02, 0.98)) for t in tint)
    return Background(colour=colour, amplitude=float(rng.uniform(0.0, 0.12)), angle=float(rng.uniform(0, 2 * math.pi)))


def _fits(o: Obj, others: Sequence[Obj], margin_px: float = 2.0) -> bool:
    r = o.extent()
    px, py = o.x * RESOLUTION, o.y * RESOLUTION
    if not (r + 1 <= px <= RESOLUTION - r - 1 and r + 1 <= py <= RESOLUTION - r - 1):
        return False
    for q in others:
        d = math.hypot(px - q.x * RESOLUTION, py - q.y * RESOLUTION)
        if d < r + q.extent() + margin_px:
            return False
    return True


def _free_position(rng: np.random.Generator, shape: str, colour: str, size: str, others: Sequence[Obj]) -> Obj | None:
    for _ in range(200):
        o = Obj(shape, colour, size, float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85)))
        if _fits(o, others):
            return o
    return None


def _scatter(rng: np.random.Generator, shape: str, colour: str, size: str, n: int) -> tuple[Obj, ...]:
    """``n`` non-touching objects at random places (the layout restarts when it gets stuck)."""
    while True:
        objs: list[Obj] = []
        while len(objs) < n:
            o = _free_position(rng, shape, colour, size, objs)
            if o is None:
                break
            objs.append(o)
        if len(objs) == n:
            return tuple(objs)


def _single(rng: np.random.Generator, split: Split) -> Scene:
    colour, shape = _pick_pair(rng, split)
    size = str(rng.choice(list(SIZES)))
    stated = frozenset(k for k in ("size", "position") if rng.random() < 0.7)
    position = None
    if "position" in stated:
        position = str(rng.choice(list(POSITIONS)))
        cx, cy = POSITIONS[position]
        o = Obj(shape, colour, size, cx + float(rng.uniform(-0.05, 0.05)), cy + float(rng.uniform(-0.05, 0.05)))
    else:
        (o,) = _scatter(rng, shape, colour, size, 1)
    return Scene("single", (o,), _background(rng), stated=stated, position=position)


def _pick_pair(rng: np.random.Generator, split: Split, avoid: set | None = None) -> tuple[str, str]:
    pool = [p for p in _pairs(split) if not avoid or p not in avoid]
    if split == "heldout" and not avoid:
        pool = sorted(HELD_OUT_PAIRS)
    return pool[int(rng.integers(len(pool)))]


def _relation(rng: np.random.Generator, split: Split) -> Scene:
    rel = str(rng.choice(RELATIONS))
    first = _pick_pair(rng, split)
    second = _pick_pair(rng, "train" if split == "heldout" else split, avoid={first})
    if split == "heldout" and rng.random() < 0.5:
        first, second = second, first
    for _ in range(500):
        sa, sb = (str(rng.choice(list(SIZES))) for _ in range(2))
        along = (float(rng.uniform(0.18, 0.38)), float(rng.uniform(0.62, 0.82)))  # subject, reference
        across = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
        if rel in ("right of", "below"):
            along = (along[1], along[0])
        if rel in ("left of", "right of"):
            a = Obj(first[1], first[0], sa, along[0], across[0])
            b = Obj(second[1], second[0], sb, along[1], across[1])
        else:
            a = Obj(first[1], first[0], sa, across[0], along[0])
            b = Obj(second[1], second[0], sb, across[1], along[1])
        if _fits(a, []) and _fits(b, [a]):
            return Scene("relation", (a, b), _background(rng), relation=rel)
    raise RuntimeError("no relation layout found")


def _count(rng: np.random.Generator, split: Split) -> Scene:
    colour, shape = _pick_pair(rng, split)
    n = int(rng.choice(list(COUNTS)))
    return Scene("count", _scatter(rng, shape, colour, "small", n), _background(rng))


_SAMPLERS = {"single": _single, "relation": _relation, "count": _count}


def sample_scene(rng: np.random.Generator, split: Split = "train", kind: Kind | None = None) -> Scene:
    """One random scene of ``split``; ``kind`` is drawn by :data:`KIND_WEIGHTS` when not given."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if kind is None:
        kinds = list(KIND_WEIGHTS)
        kind = kinds[int(rng.choice(len(kinds), p=np.array(list(KIND_WEIGHTS.values())) / sum(KIND_WEIGHTS.values())))]
    return _SAMPLERS[kind](rng, split)


def scene_for_prompt(prompt: str, rng: np.random.Generator) -> Scene:
    """A random scene that realises ``prompt`` (one the grammar produces); :class:`ValueError` otherwise."""
    return _realise(parse_prompt(prompt), rng)


# ---------------------------------------------------------------------------
# parsing (the judge reads prompts back into what they state)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Statement:
    """What a prompt states: the kind, its objects as ``(colour, shape)``, and the stated attributes."""

    kind: Kind
    pairs: tuple[tuple[str, str], ...]
    size: str | None = None
    position: str | None = None
    relation: str | None = None
    count: int = 1


def parse_prompt(prompt: str) -> Statement:
    """Read a grammar prompt back into a :class:`Statement`; :class:`ValueError` names what does not parse."""
    words = prompt.strip().lower().split()
    inv_count = {v: k for k, v in COUNTS.items()}
    if len(words) >= 3 and words[0] in inv_count:
        n, colour, shapes = inv_count[words[0]], words[1], words[2]
        shape = shapes[:-1] if shapes.endswith("s") else shapes
        if len(words) == 3 and colour in COLOURS and shape in SHAPES:
            return Statement("count", ((colour, shape),), count=n)
    text = " ".join(words)
    for rel in RELATIONS:
        token = f" {rel} "
        if token in text:
            left, right = text.split(token, 1)
            a, b = _np(left.split()), _np(right.split())
            if a and b:
                return Statement("relation", (a, b), relation=rel)
    if words and words[0] in ("a", "an"):
        rest = words[1:]
        size = rest[0] if rest and rest[0] in SIZES else None
        if size:
            rest = rest[1:]
        if len(rest) >= 2 and rest[0] in COLOURS and rest[1] in SHAPES:
            tail = " ".join(rest[2:])
            position = None
            if tail:
                matches = [k for k, v in POSITION_PHRASES.items() if v == tail]
                if not matches:
                    raise ValueError(f"not a mini-world prompt: {prompt!r} (unknown position {tail!r})")
                position = matches[0]
            return Statement("single", ((rest[0], rest[1]),), size=size, position=position)
    raise ValueError(
        f"not a mini-world prompt: {prompt!r}; the grammar makes 'a [small|large] COLOUR SHAPE [on the left|...]', "
        "'a COLOUR SHAPE left of|right of|above|below a COLOUR SHAPE' and 'two|three COLOUR SHAPEs' "
        "('an' before orange)"
    )


def _np(words: list[str]) -> tuple[str, str] | None:
    if len(words) == 3 and words[0] in ("a", "an") and words[1] in COLOURS and words[2] in SHAPES:
        return (words[1], words[2])
    return None


def _realise(st: Statement, rng: np.random.Generator) -> Scene:
    bg = _background(rng)
    if st.kind == "count":
        colour, shape = st.pairs[0]
        return Scene("count", _scatter(rng, shape, colour, "small", st.count), bg)
    if st.kind == "relation":
        for _ in range(100):
            s = _relation(rng, "train")
            (ca, sa), (cb, sb) = st.pairs
            a, b = s.objects
            if st.relation != s.relation:
                continue
            return Scene("relation", (replace(a, colour=ca, shape=sa), replace(b, colour=cb, shape=sb)), bg, relation=st.relation)
        raise RuntimeError("no relation layout found")
    colour, shape = st.pairs[0]
    size = st.size or str(rng.choice(list(SIZES)))
    stated = frozenset(k for k, v in (("size", st.size), ("position", st.position)) if v)
    if st.position:
        cx, cy = POSITIONS[st.position]
        o = Obj(shape, colour, size, cx + float(rng.uniform(-0.05, 0.05)), cy + float(rng.uniform(-0.05, 0.05)))
    else:
        (o,) = _scatter(rng, shape, colour, size, 1)
    return Scene("single", (o,), bg, stated=stated, position=st.position)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    raise ValueError(f"unknown shape {shape!r}")


def _background_array(bg: Background, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    ramp = (xs * math.cos(bg.angle) + ys * math.sin(bg.angle)) * bg.amplitude
    img = np.asarray(bg.colour, dtype=np.float32)[None, None, :] + ramp[..., None]
    return np.clip(img, 0.0, 1.0)


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """The scene as an ``[H, W, 3]`` float32 array in [0, 1] (``H = W = resolution``)."""
    big = resolution * SUPERSAMPLE
    base = Image.fromarray((_background_array(scene.background, big) * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(base)
    for o in scene.objects:
        r = o.radius(resolution) * SUPERSAMPLE
        cx, cy = o.x * big, o.y * big
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_shape_points(o.shape, cx, cy, r), fill=fill)
    small = base.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_batch(scenes: Sequence[Scene], resolution: int = RESOLUTION) -> np.ndarray:
    """``[N, 3, H, W]`` float32 in [0, 1]."""
    return np.stack([render(s, resolution) for s in scenes]).transpose(0, 3, 1, 2).copy()


def prompts(n: int, split: Split = "train", *, seed: int = 0, kind: Kind | None = None) -> list[str]:
    """``n`` prompts of ``split`` drawn with ``seed`` (duplicates possible, as in a real prompt set)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split, kind).prompt for _ in range(n)]


def evaluation_prompts(split: Split = "heldout", per_kind: int = 16, *, seed: int = 1234) -> list[str]:
    """A fixed, balanced prompt set of ``split``: ``per_kind`` distinct prompts of each kind, or every one
    the kind has when it has fewer (the held-out split has 8 count prompts: 4 pairs × two or three)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for kind in ("single", "relation", "count"):
        seen: list[str] = []
        for _ in range(10_000):
            if len(seen) == per_kind:
                break
            p = sample_scene(rng, split, kind).prompt  # type: ignore[arg-type]
            if p not in seen:
                seen.append(p)
        out += seen
    return out


__all__ = [
    "COLOURS",
    "COUNTS",
    "HELD_OUT_PAIRS",
    "POSITIONS",
    "RELATIONS",
    "RESOLUTION",
    "SHAPES",
    "SIZES",
    "Background",
    "Obj",
    "Scene",
    "Statement",
    "DEGRADATIONS",
    "attributes",
    "degrade",
    "contradicting_prompt",
    "evaluation_prompts",
    "mutate",
    "parse_prompt",
    "prompt_of",
    "prompts",
    "render",
    "render_batch",
    "sample_scene",
    "scene_for_prompt",
    "spatial_attribute",
    "vocabulary",
]


# ---------------------------------------------------------------------------
# wrong and degraded images (the negatives the preference and aesthetic models learn from)
# ---------------------------------------------------------------------------
def attributes(scene: Scene) -> list[str]:
    """The attributes ``scene``'s prompt states, each one :func:`mutate` can contradict."""
    options = ["colour", "shape"]
    if scene.kind == "single":
        options += [k for k in ("position", "size") if k in scene.stated]
    elif scene.kind == "count":
        options.append("count")
    else:
        options.append("relation")
    return options


def spatial_attribute(scene: Scene) -> str | None:
    """``"position"`` or ``"relation"`` when ``scene``'s prompt states where things are, else None."""
    return next((a for a in attributes(scene) if a in ("position", "relation")), None)


def _attribute_to_contradict(scene: Scene, rng: np.random.Generator, attribute: str | None) -> str:
    """``attribute`` once checked against what ``scene``'s prompt states, or one of those at random."""
    options = attributes(scene)
    if attribute is not None and attribute not in options:
        raise ValueError(f"{scene.prompt!r} states {', '.join(options)}; it cannot contradict {attribute!r}")
    return attribute or options[int(rng.integers(len(options)))]


def mutate(
    scene: Scene, rng: np.random.Generator, *, counts: Sequence[int] = (1, 2, 3, 4), attribute: str | None = None
) -> Scene:
    """A scene that contradicts ``scene``'s prompt in one stated attribute (colour, shape, position,
    size, count or relation), drawn on the same background.

    :param counts: the object counts a wrong count is drawn from; ``(2, 3)`` keeps the mutated
        scene describable by the grammar (its ``prompt`` is then a contradicting caption).
    :param attribute: the attribute to contradict, one of :func:`attributes` (default: one at random).
    :raises ValueError: ``attribute`` is not one the prompt states.
    """
    objs = list(scene.objects)
    what = _attribute_to_contradict(scene, rng, attribute)
    i = int(rng.integers(len(objs))) if scene.kind == "relation" else 0
    if what == "colour":
        others = [c for c in COLOURS if c != objs[i].colour]
        new = str(others[int(rng.integers(len(others)))])
        idx = range(len(objs)) if scene.kind == "count" else [i]
        objs = [replace(o, colour=new) if j in idx else o for j, o in enumerate(objs)]
    elif what == "shape":
        others = [s for s in SHAPES if s != objs[i].shape]
        new = str(others[int(rng.integers(len(others)))])
        idx = range(len(objs)) if scene.kind == "count" else [i]
        objs = [replace(o, shape=new) if j in idx else o for j, o in enumerate(objs)]
    elif what == "position":
        others = [p for p in POSITIONS if p != scene.position]
        cx, cy = POSITIONS[str(others[int(rng.integers(len(others)))])]
        objs = [replace(objs[0], x=cx, y=cy)]
    elif what == "size":
        objs = [replace(objs[0], size="large" if objs[0].size == "small" else "small")]
    elif what == "count":
        n = len(objs)
        m = int(rng.choice([k for k in counts if k != n]))
        o = objs[0]
        objs = list(_scatter(rng, o.shape, o.colour, o.size, m))
    else:  # relation: the two objects trade places
        a, b = objs
        objs = [replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)]
    return replace(scene, objects=tuple(objs))


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def contradicting_prompt(scene: Scene, rng: np.random.Generator, attribute: str | None = None) -> str:
    """A grammar prompt that ``scene``'s image contradicts in one attribute: another colour, shape,
    stated position or size, count (two <-> three), or the relation turned around.

    (For a colour, shape, size or count this is the prompt of :func:`mutate`'s scene. Moving an object,
    for a position or a relation, leaves a scene's prompt as it was, so the caption names another
    position or the inverse relation instead.)

    :param attribute: the attribute to contradict, one of :func:`attributes` (default: one at random).
    :raises ValueError: ``attribute`` is not one the prompt states.
    """
    what = _attribute_to_contradict(scene, rng, attribute)
    if what == "relation":
        return prompt_of(replace(scene, relation=_INVERSE[scene.relation]))  # type: ignore[index]
    if what == "position":
        others = [p for p in POSITIONS if p != scene.position]
        return prompt_of(replace(scene, position=str(others[int(rng.integers(len(others)))])))
    return mutate(scene, rng, counts=(2, 3), attribute=what).prompt


DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "colour_cast", "blocks", "smudge", "melt")


def degrade(image: np.ndarray, rng: np.random.Generator, severity: float, kind: str | None = None) -> np.ndarray:
    """``image`` (``[H, W, 3]`` in [0, 1]) spoiled by one of :data:`DEGRADATIONS` at ``severity`` (0 mild, 1 worst).

    ``"melt"`` is what reward hacking drew in this world: a Gaussian blur that rounds every corner off,
    then an unsharp mask that puts the edge back with a dark or bright halo around it (R0 runs on rewards
    that never saw it turned squares, triangles and diamonds into haloed blobs the rewards scored nearly as
    high as clean renders). At severity 1 the judge reads the right shape in about a third of renders.

    :param image: ``[H, W, 3]`` in [0, 1], ``H`` and ``W`` multiples of 4 and at least 8 (``"blocks"``
        averages 4-pixel cells, ``"smudge"`` paints 6-pixel patches).
    :param severity: clipped to [0, 1]; must be a finite number.
    :param kind: one of :data:`DEGRADATIONS`, or ``None`` for one drawn from ``rng``.
    :raises ValueError: an image of another shape or range, a non-finite severity, or an unknown kind.
    """
    from PIL import ImageFilter

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] % 4 or image.shape[1] % 4 or min(image.shape[:2]) < 8:
        raise ValueError(f"degrade() takes one [H, W, 3] image with H and W multiples of 4 and >= 8, got shape {image.shape}")
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError(f"degrade() takes an image in [0, 1] (float), got values in [{image.min()}, {image.max()}]")
    if not np.isfinite(severity):
        raise ValueError(f"severity must be a finite number in [0, 1], got {severity}")
    image = image.astype(np.float32)
    if kind is None:
        kind = str(DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))])
    s = float(np.clip(severity, 0.0, 1.0))
    h, w, _ = image.shape
    if kind in ("blur", "melt"):
        pil = Image.fromarray((image * 255 + 0.5).astype(np.uint8))
        pil = pil.filter(ImageFilter.GaussianBlur(0.4 + 1.6 * s if kind == "blur" else 0.8 + 1.7 * s))
        if kind == "melt":  # the edge put back, with its halo
            pil = pil.filter(ImageFilter.UnsharpMask(radius=2, percent=int(150 + 250 * s), threshold=0))
        out = np.asarray(pil, np.float32) / 255.0
    elif kind == "noise":
        out = image + rng.normal(0.0, 0.03 + 0.17 * s, image.shape).astype(np.float32)
    elif kind == "colour_cast":
        cast = rng.normal(0.0, 1.0, 3).astype(np.float32)
        out = image + (0.08 + 0.3 * s) * cast / max(float(np.linalg.norm(cast)), 1e-6)
    elif kind == "blocks":
        f = 2 if s < 0.5 else 4
        small = image.reshape(h // f, f, w // f, f, 3).mean((1, 3))
        out = np.repeat(np.repeat(small, f, 0), f, 1)
        out = out + rng.normal(0.0, 0.05 * s, out.shape).astype(np.float32)
    elif kind == "smudge":
        out = image.copy()
        for _ in range(1 + int(3 * s)):
            y, x = (int(v) for v in rng.integers(0, [h - 6, w - 6]))
            patch = rng.uniform(0, 1, 3).astype(np.float32)
            out[y : y + 6, x : x + 6] = 0.4 * out[y : y + 6, x : x + 6] + 0.6 * patch
    else:
        raise ValueError(f"unknown degradation {kind!r}; use one of {', '.join(DEGRADATIONS)}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
