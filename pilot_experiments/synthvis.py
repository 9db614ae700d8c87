"""SynthVis: a seeded procedural visual world, its tasks and its word-level tokenizer.

Images hold a few objects (shape, colour, size, texture, position) drawn on a grid of square
patches, so that every object's patch set is known exactly. Videos are sequences of such frames in
which objects appear, move, change colour and vanish. Tasks are captions, single-image VQA,
two-image questions and temporal questions about a video; every answer needs the pixels.

Everything is generated from a seed: `np.random.default_rng([split, seed, index])`, so the train,
val and test splits are disjoint by seed and any item can be regenerated on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 220, 40),
    "purple": (160, 60, 210),
    "white": (235, 235, 235),
}
SHAPES = ("square", "circle", "triangle", "cross", "diamond")
PLURALS = {shape: shape + ("es" if shape == "cross" else "s") for shape in SHAPES}
SIZES = {"small": 2, "large": 3}  # side length in patches
TEXTURES = ("solid", "striped")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
RELATIONS = ("left", "right", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ORDINALS = ("first", "second")
FUNCTION_WORDS = (
    "a", "the", "at", "and", "is", "are", "was", "of", "what", "which", "how", "many",
    "colour", "shape", "size", "texture", "there", "in", "image", "object", "objects",
    "when", "it", "appeared", "before", "vanished", "or", "has", "more", "describe", "?", ",", ".",
)
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<ans>", "<img>")
SPLITS = {"train": 0, "val": 1, "test": 2}
QA_KINDS = (  # every task's `QA.kind`: the caption, single-image VQA, two-image and temporal questions
    "caption", "colour", "size", "texture", "shape", "count", "relation",
    "multi-colour", "multi-count", "appear-colour", "vanish-colour", "first",
)

WORD_CLASSES: dict[str, str] = {
    **{w: "special" for w in SPECIAL_TOKENS},
    **{w: "colour" for w in COLOURS},
    **{w: "shape" for w in SHAPES},
    **{w: "shape" for w in PLURALS.values()},
    **{w: "size" for w in SIZES},
    **{w: "texture" for w in TEXTURES},
    **{w: "position" for w in (*ROWS, *COLS, *RELATIONS, *ORDINALS)},
    **{w: "number" for w in NUMBERS},
    **{w: "function" for w in FUNCTION_WORDS},
}
VISUAL_CONTENT_CLASSES = frozenset({"colour", "shape", "size", "texture", "position", "number"})
BACKGROUND = 24  # grey level of the empty canvas


class SynthVisError(ValueError):
    """A world or task request that cannot be satisfied (bad size, unknown word, too many objects)."""


# ----------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """Word-level tokenizer over the world's fixed vocabulary; knows each word's class."""

    def __init__(self) -> None:
        words = list(dict.fromkeys(WORD_CLASSES))  # specials first, then a fixed order
        self.words: tuple[str, ...] = tuple(words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.pad_id, self.bos_id, self.eos_id, self.ans_id, self.img_id = (
            self.ids[w] for w in SPECIAL_TOKENS
        )
        self.classes = tuple(WORD_CLASSES[w] for w in self.words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str | list[str] | tuple[str, ...]) -> list[int]:
        words = text.split() if isinstance(text, str) else list(text)
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise SynthVisError(f"words outside the SynthVis vocabulary: {unknown}")
        return [self.ids[w] for w in words]

    def decode(self, ids: list[int] | torch.Tensor, *, strip_special: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        words = [self.words[i] for i in ids]
        if strip_special:
            words = [w for w in words if w not in SPECIAL_TOKENS]
        return " ".join(words)

    def word_class(self, token_id: int) -> str:
        return self.classes[token_id]

    def is_visual_content(self, token_id: int) -> bool:
        """True for colours, shapes, sizes, textures, positions and numbers; False otherwise."""
        return self.classes[token_id] in VISUAL_CONTENT_CLASSES

    def visual_content_mask(self) -> torch.Tensor:
        """(vocab,) bool tensor: which token ids are visual-content words."""
        return torch.tensor([c in VISUAL_CONTENT_CLASSES for c in self.classes])

    def class_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, special) (vocab,) bool tensors, the masks modality-aware verification reads;
        every other token is a function word."""
        return self.visual_content_mask(), torch.tensor([c == "special" for c in self.classes])


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class WorldObject:
    """One object in one frame; `row`, `col` are its top-left patch, `side` its side in patches."""

    ident: int
    shape: str
    colour: str
    size: str
    texture: str
    row: int
    col: int

    @property
    def side(self) -> int:
        return SIZES[self.size]

    @property
    def centre(self) -> tuple[float, float]:
        return self.row + self.side / 2, self.col + self.side / 2


@dataclass(frozen=True)
class Scene:
    """The objects of one image or frame on a `grid` x `grid` patch grid (later objects on top)."""

    grid: int
    objects: tuple[WorldObject, ...]

    def object_patches(self, ident: int) -> np.ndarray:
        """Raster indices (row * grid + col) of the patches the object covers, visible or not."""
        obj = next((o for o in self.objects if o.ident == ident), None)
        if obj is None:
            raise SynthVisError(f"object {ident} is not in this scene")
        rows, cols = np.meshgrid(np.arange(obj.side) + obj.row, np.arange(obj.side) + obj.col, indexing="ij")
        return (rows * self.grid + cols).ravel()

    def region(self, obj: WorldObject) -> tuple[str, str]:
        r, c = obj.centre
        third = self.grid / 3
        return ROWS[min(int(r // third), 2)], COLS[min(int(c // third), 2)]

    def caption_order(self) -> list[WorldObject]:
        """The objects in the order a caption describes them: raster order of their top-left patch."""
        return sorted(self.objects, key=lambda o: (o.row, o.col))


@cache
def _shape_mask(shape: str, side_px: int) -> np.ndarray:
    """Boolean (side_px, side_px) mask of a shape filling its box."""
    c = (np.arange(side_px) + 0.5) / side_px * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        m = (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8)
    elif shape == "circle":
        m = x**2 + y**2 <= 0.85
    elif shape == "diamond":
        m = np.abs(x) + np.abs(y) <= 0.95
    elif shape == "triangle":
        m = (y >= -0.9) & (y <= 0.9) & (np.abs(x) <= (y + 0.9) / 2)
    elif shape == "cross":
        m = ((np.abs(x) <= 0.3) & (np.abs(y) <= 0.95)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 0.95))
    else:
        raise SynthVisError(f"unknown shape {shape!r}; known: {SHAPES}")
    return m


@cache
def _sprite(shape: str, colour: str, texture: str, side_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (side, side, 3), mask bool (side, side)) of one object."""
    mask = _shape_mask(shape, side_px)
    rgb = np.broadcast_to(np.array(COLOURS[colour], dtype=np.float32), (side_px, side_px, 3)).copy()
    if texture == "striped":
        rgb[1::2] *= 0.45
    return rgb.astype(np.uint8), mask


def render(scene: Scene, patch_px: int) -> np.ndarray:
    """Draw a scene: uint8 array (3, grid * patch_px, grid * patch_px)."""
    size = scene.grid * patch_px
    canvas = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    for obj in scene.objects:
        side = obj.side * patch_px
        rgb, mask = _sprite(obj.shape, obj.colour, obj.texture, side)
        y, x = obj.row * patch_px, obj.col * patch_px
        window = canvas[y : y + side, x : x + side]
        window[mask] = rgb[mask]
    return canvas.transpose(2, 0, 1)


def _inside_band(start: int, side: int, grid: int) -> bool:
    """Whether an object from patch `start` to `start + side` has its centre at least `grid / 16`
    patches from both boundaries between the three region bands of a `grid`-patch line."""
    centre = start + side / 2
    return all(abs(centre - grid * k / 3) >= grid / 16 for k in (1, 2))


def random_scene(rng: np.random.Generator, grid: int, n_objects: int, *, unique_shapes: bool = False) -> Scene:
    """Place `n_objects` random objects on the grid without overlap (one free patch between), each
    centre at least `grid / 16` patches from the boundaries of the region bands (`Scene.region`),
    so that the region a caption names has one right answer."""
    if n_objects > len(SHAPES) and unique_shapes:
        raise SynthVisError(f"at most {len(SHAPES)} objects with unique shapes")
    shapes = rng.permutation(SHAPES)[:n_objects] if unique_shapes else rng.choice(SHAPES, n_objects)
    looks = [(str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZES))), str(rng.choice(TEXTURES))) for _ in shapes]
    starts = {side: [s for s in range(grid - side + 1) if _inside_band(s, side, grid)] for side in SIZES.values()}
    for _ in range(100):
        occupied = np.zeros((grid + 2, grid + 2), dtype=bool)
        objects = []
        for ident, (shape, (colour, size, texture)) in enumerate(zip(shapes, looks)):
            side = SIZES[size]
            row, col = (starts[side][int(i)] for i in rng.integers(0, len(starts[side]), size=2))
            if occupied[row : row + side + 2, col : col + side + 2].any():
                break
            occupied[row + 1 : row + side + 1, col + 1 : col + side + 1] = True
            objects.append(WorldObject(ident, str(shape), colour, size, texture, row, col))
        else:
            return Scene(grid, tuple(objects))
    raise SynthVisError(f"could not place {n_objects} objects on a {grid}x{grid} grid; use a larger image or fewer objects")


# ----------------------------------------------------------------------------- video


@dataclass(frozen=True)
class Track:
    """One object's life in a video: appears, moves one patch per `step_every` frames, may change
    colour once, vanishes (frame `vanish` is the first frame without it)."""

    ident: int
    shape: str
    colour: str
    new_colour: str | None
    change: int | None
    size: str
    texture: str
    appear: int
    vanish: int
    row: int
    col: int
    d_row: int
    d_col: int
    step_every: int

    def colour_at(self, frame: int) -> str:
        return self.new_colour if self.change is not None and frame >= self.change else self.colour

    def place_at(self, frame: int, grid: int) -> tuple[int, int]:
        steps = (frame - self.appear) // self.step_every
        span = grid - SIZES[self.size]
        return _bounce(self.row + self.d_row * steps, span), _bounce(self.col + self.d_col * steps, span)


def _bounce(value: int, span: int) -> int:
    period = 2 * span if span > 0 else 1
    value %= period
    return value if value <= span else period - value


@dataclass(frozen=True)
class Video:
    """A procedural video of `n_frames` frames on a `grid` x `grid` patch grid; frames are rendered
    on demand, so streams of any length cost nothing until read."""

    grid: int
    n_frames: int
    tracks: tuple[Track, ...]

    def scene(self, frame: int) -> Scene:
        if not 0 <= frame < self.n_frames:
            raise SynthVisError(f"frame {frame} outside the video's {self.n_frames} frames")
        objs = []
        for t in self.tracks:
            if t.appear <= frame < t.vanish:
                row, col = t.place_at(frame, self.grid)
                objs.append(WorldObject(t.ident, t.shape, t.colour_at(frame), t.size, t.texture, row, col))
        return Scene(self.grid, tuple(objs))

    def frames(self, frames: list[int] | np.ndarray, patch_px: int) -> np.ndarray:
        """uint8 array (len(frames), 3, H, W)."""
        return np.stack([render(self.scene(int(f)), patch_px) for f in frames])

    def events(self) -> list[tuple[int, str, int]]:
        """(frame, kind, object ident) for every appear / change / vanish, in time order."""
        ev = []
        for t in self.tracks:
            ev.append((t.appear, "appear", t.ident))
            if t.change is not None:
                ev.append((t.change, "change", t.ident))
            if t.vanish < self.n_frames:
                ev.append((t.vanish, "vanish", t.ident))
        return sorted(ev)


def random_video(rng: np.random.Generator, grid: int, n_frames: int, n_objects: int) -> Video:
    """Objects with distinct shapes, each appearing at a distinct frame, living a random span."""
    if n_objects > len(SHAPES):
        raise SynthVisError(f"at most {len(SHAPES)} objects per video (shapes must be unique)")
    if n_frames < 2 * n_objects:
        raise SynthVisError(f"{n_frames} frames are too few for {n_objects} objects")
    shapes = rng.permutation(SHAPES)[:n_objects]
    appears = np.sort(rng.choice(n_frames - 1, size=n_objects, replace=False))
    tracks = []
    for ident, (shape, appear) in enumerate(zip(shapes, appears)):
        appear = int(appear)
        vanish = int(rng.integers(appear + 1, n_frames + 1)) if rng.random() < 0.6 else n_frames
        colour = str(rng.choice(list(COLOURS)))
        change = new_colour = None
        if vanish - appear >= 3 and rng.random() < 0.5:
            change = int(rng.integers(appear + 1, vanish))
            new_colour = str(rng.choice([c for c in COLOURS if c != colour]))
        size = str(rng.choice(list(SIZES)))
        span = grid - SIZES[size]
        tracks.append(
            Track(
                ident, str(shape), colour, new_colour, change, size, str(rng.choice(TEXTURES)),
                appear, vanish, int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1)),
                int(rng.integers(-1, 2)), int(rng.integers(-1, 2)), int(rng.integers(1, max(2, n_frames // grid) + 1)),
            )
        )
    return Video(grid, n_frames, tuple(tracks))


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class QA:
    """One question and its answer (word tuples). `objects` are the idents the question is about
    (per unit: (unit index, ident)); `event_frames` the frames of the events it asks about."""

    kind: str
    question: tuple[str, ...]
    answer: tuple[str, ...]
    objects: tuple[tuple[int, int], ...] = ()
    event_frames: tuple[int, ...] = ()


@dataclass
class Episode:
    """Visual input (one image, two images, or video frames) plus the questions asked about it.

    `pixels` (units, 3, H, W) float32 in [0, 1]; `times` the frame index of each unit (image index
    for multi-image episodes); `scenes` the ground truth of each unit."""

    pixels: torch.Tensor
    times: list[int]
    scenes: list[Scene]
    qas: list[QA]
    video: Video | None = field(default=None, repr=False)


CAPTION_ARTICLES = ("a", "the")
CAPTION_PREPOSITIONS = ("at", "in")
CAPTION_SEPARATORS = (".", "and")
CAPTION_PHRASE = 10  # words per object in a caption: article size colour texture shape preposition the row col separator
CAPTION_CONTENT_SLOTS = (1, 2, 3, 4, 7, 8)  # the words of a phrase that describe its object


def caption_words(scene: Scene, rng: np.random.Generator | None = None) -> tuple[str, ...]:
    """'a large red striped circle at the top left . the small ...' in raster order of the objects.

    The content words (size, colour, texture, shape, region) follow from the picture; the function
    words do not: with `rng`, each phrase draws its article, preposition and separator at random, so
    a caption is one of many equally right wordings and models disagree on function words exactly
    where nothing in the image decides them. Without `rng` the first wording is used."""
    def pick(options: tuple[str, ...]) -> str:
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    objects = scene.caption_order()
    words: list[str] = []
    for i, obj in enumerate(objects):
        row, col = scene.region(obj)
        separator = "." if i == len(objects) - 1 else pick(CAPTION_SEPARATORS)
        words += [pick(CAPTION_ARTICLES), obj.size, obj.colour, obj.texture, obj.shape, pick(CAPTION_PREPOSITIONS), "the", row, col, separator]
    return tuple(words)


def caption_facts(words: tuple[str, ...] | list[str]) -> list[tuple[str, str, str]]:
    """Parse a caption into (shape, attribute, value) facts, whatever its function words;
    malformed phrases give no facts."""
    facts = []
    phrase: list[str] = []
    for word in (*words, "."):
        if word not in CAPTION_SEPARATORS:
            phrase.append(word)
            continue
        w, phrase = phrase, []
        if len(w) == 9 and w[0] in CAPTION_ARTICLES and w[5] in CAPTION_PREPOSITIONS and w[6] == "the":
            shape = w[4]
            facts += [(shape, "size", w[1]), (shape, "colour", w[2]), (shape, "texture", w[3]), (shape, "region", w[7] + " " + w[8])]
    return facts


def _unique(scene: Scene, attr: str) -> list[WorldObject]:
    values = [getattr(o, attr) for o in scene.objects]
    return [o for o in scene.objects if values.count(getattr(o, attr)) == 1]


def relation_question(a: WorldObject, b: WorldObject, rng: np.random.Generator, unit: int = 0) -> QA:
    """"is the circle left or right of the square ?": where `a` lies from `b` along an axis on
    which the two do not overlap (one at random when neither does), the two options in random
    order, in the form of GQA's relation questions (Hudson and Manning 2019). Objects never
    overlap, so such an axis exists, and "left" always means wholly to the left: the answer follows
    from the picture, never from a tie-break between two axes."""
    left, right, above, below = RELATIONS
    axes = []
    if a.col + a.side <= b.col or b.col + b.side <= a.col:
        axes.append((left, right) if a.col < b.col else (right, left))
    if a.row + a.side <= b.row or b.row + b.side <= a.row:
        axes.append((above, below) if a.row < b.row else (below, above))
    if not axes:
        raise SynthVisError(f"objects {a.ident} and {b.ident} overlap; a relation needs them apart")
    answer, other = axes[int(rng.integers(len(axes)))]
    options = (answer, "or", other) if rng.random() < 0.5 else (other, "or", answer)
    of = ("of",) if answer in (left, right) else ()
    return QA("relation", ("is", "the", a.shape, *options, *of, "the", b.shape, "?"), (answer,), ((unit, a.ident), (unit, b.ident)))


def image_questions(scene: Scene, rng: np.random.Generator, unit: int = 0) -> list[QA]:
    """The caption, then in random order: colour, size and texture of every object whose shape is
    unique, the shape of every object whose colour is unique, two counts (a shape in the picture
    and a random one) and up to two relations between uniquely-shaped objects (`relation_question`)."""
    qas = [QA("caption", ("describe", "the", "image"), caption_words(scene, rng), tuple((unit, o.ident) for o in scene.objects))]
    questions = []
    by_shape = _unique(scene, "shape")
    for o in by_shape:
        for attr in ("colour", "size", "texture"):
            questions.append(QA(attr, ("what", attr, "is", "the", o.shape, "?"), (getattr(o, attr),), ((unit, o.ident),)))
    for o in _unique(scene, "colour"):
        questions.append(QA("shape", ("what", "shape", "is", "the", o.colour, "object", "?"), (o.shape,), ((unit, o.ident),)))
    for shape in dict.fromkeys((str(rng.choice([o.shape for o in scene.objects])), str(rng.choice(SHAPES)))):
        hits = [o for o in scene.objects if o.shape == shape]
        questions.append(QA("count", ("how", "many", PLURALS[shape], "are", "there", "?"), (NUMBERS[len(hits)],), tuple((unit, o.ident) for o in hits)))
    pairs = [(a, b) for a in by_shape for b in by_shape if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs[:2]:
        questions.append(relation_question(a, b, rng, unit))
    order = rng.permutation(len(questions))
    return qas + [questions[i] for i in order]


def multi_image_questions(scenes: list[Scene], rng: np.random.Generator) -> list[QA]:
    qas = []
    which = int(rng.integers(2))
    by_shape = _unique(scenes[which], "shape")
    if by_shape:
        o = by_shape[rng.integers(len(by_shape))]
        qas.append(QA("multi-colour", ("what", "colour", "is", "the", o.shape, "in", "the", ORDINALS[which], "image", "?"), (o.colour,), ((which, o.ident),)))
    colours = list(COLOURS)
    rng.shuffle(colours)
    for colour in colours:
        counts = [sum(o.colour == colour for o in s.objects) for s in scenes]
        if counts[0] != counts[1]:
            more = int(counts[1] > counts[0])
            refs = tuple((u, o.ident) for u, s in enumerate(scenes) for o in s.objects if o.colour == colour)
            qas.append(QA("multi-count", ("which", "image", "has", "more", colour, "objects", "?"), (ORDINALS[more],), refs))
            break
    return qas


def video_questions(video: Video, rng: np.random.Generator, until: int | None = None) -> list[QA]:
    """Temporal questions about objects that appeared before frame `until` (default: the end)."""
    until = video.n_frames if until is None else until
    seen = [t for t in video.tracks if t.appear < until]
    qas = []
    for t in seen:
        qas.append(QA("appear-colour", ("what", "colour", "was", "the", t.shape, "when", "it", "appeared", "?"), (t.colour,), ((-1, t.ident),), (t.appear,)))
        if t.vanish < until:
            last = t.vanish - 1
            qas.append(QA("vanish-colour", ("what", "colour", "was", "the", t.shape, "before", "it", "vanished", "?"), (t.colour_at(last),), ((-1, t.ident),), (last,)))
    for _ in range(2):
        if len(seen) >= 2:
            a, b = rng.choice(len(seen), size=2, replace=False)
            a, b = seen[a], seen[b]
            first = a if a.appear < b.appear else b
            qas.append(QA("first", ("which", "shape", "appeared", "first", ",", "the", a.shape, "or", "the", b.shape, "?"), (first.shape,), ((-1, a.ident), (-1, b.ident)), (a.appear, b.appear)))
    order = rng.permutation(len(qas))
    return [qas[i] for i in order]


def _rng(split: str, seed: int, index: int, salt: int) -> np.random.Generator:
    if split not in SPLITS:
        raise SynthVisError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    return np.random.default_rng([SPLITS[split], seed, salt, index])


def _to_pixels(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).float().div_(255.0)


def image_episode(split: str, seed: int, index: int, *, image_px: int = 64, patch_px: int = 4, max_objects: int = 4) -> Episode:
    """One image with 1..max_objects objects and one question of every answerable kind."""
    if image_px % patch_px:
        raise SynthVisError(f"image_px {image_px} must be a multiple of patch_px {patch_px}")
    rng = _rng(split, seed, index, salt=1)
    scene = random_scene(rng, image_px // patch_px, int(rng.integers(1, max_objects + 1)))
    return Episode(_to_pixels(render(scene, patch_px)[None]), [0], [scene], image_questions(scene, rng))


def multi_image_episode(split: str, seed: int, index: int, *, image_px: int = 64, patch_px: int = 4, max_objects: int = 4) -> Episode:
    """Two images and questions that need both (or the named one)."""
    rng = _rng(split, seed, index, salt=2)
    scenes = [random_scene(rng, image_px // patch_px, int(rng.integers(1, max_objects + 1))) for _ in range(2)]
    pixels = _to_pixels(np.stack([render(s, patch_px) for s in scenes]))
    return Episode(pixels, [0, 1], scenes, multi_image_questions(scenes, rng))


def video_episode(
    split: str, seed: int, index: int, *, n_frames: int = 6, frame_px: int = 32, patch_px: int = 4,
    max_objects: int = 3, stride: int | None = None,
) -> Episode:
    """A short video (every `stride`-th frame of a longer one, stride random when None) with
    temporal questions. Frame times are the original frame indices."""
    rng = _rng(split, seed, index, salt=3)
    stride = int(2 ** rng.integers(0, 9)) if stride is None else stride
    video = random_video(rng, frame_px // patch_px, n_frames, int(rng.integers(2, max_objects + 1)))
    frames = list(range(n_frames))
    pixels = _to_pixels(video.frames(frames, patch_px))
    # events are defined on the sampled frames; rescale times to the longer video's frame indices
    qas = [QA(q.kind, q.question, q.answer, q.objects, tuple(f * stride for f in q.event_frames)) for q in video_questions(video, rng)]
    return Episode(pixels, [f * stride for f in frames], [video.scene(f) for f in frames], qas, video)


EPISODE_KINDS = {"image": image_episode, "multi": multi_image_episode, "video": video_episode}


def task_set(kind: str, split: str, n: int, seed: int = 0, **options) -> list[Episode]:
    """`n` episodes of one kind ('image', 'multi', 'video') from a split; options go to the
    episode function (image_px, patch_px, max_objects, n_frames, frame_px, stride)."""
    if kind not in EPISODE_KINDS:
        raise SynthVisError(f"unknown task kind {kind!r}; use one of {list(EPISODE_KINDS)}")
    return [EPISODE_KINDS[kind](split, seed, i, **options) for i in range(n)]


def stream(seed: int, n_frames: int, *, frame_px: int = 32, patch_px: int = 4, n_objects: int = 5) -> Video:
    """A long video for streaming studies (frames rendered on demand with `Video.frames`)."""
    return random_video(np.random.default_rng([SPLITS["test"], seed, 4]), frame_px // patch_px, n_frames, n_objects)
