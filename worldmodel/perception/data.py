"""Image sources for pretraining and probing a vision encoder, all behind one item type.

Every source is a `torch.utils.data.Dataset` whose item `i` is an `ImageItem(image, index, ok)` with
`image` a uint8 tensor `(C, H, W)`, C = 3, at the source's stored resolution. `collate_images` turns
a list of items into an `ImageBatch`, dropping the items that failed to decode, so one collate serves
every source and a DataLoader worker never dies on a bad file; `BadImageBudget` counts each unreadable
item once and remembers it, so a sampler can skip it thereafter (`StepBatchSampler(skip=...)`). Labels and
true states are not put in the batch: index them with `batch.indices` (`source.labels[batch.indices]`),
which stays correct after failed items are dropped.

Sources:
    ImageFolderDataset  a folder of jpg/jpeg/png/webp files, class subfolders used as labels
    FractalDataset      synthetic formula-driven images (FractalDB), no download needed
    TensorImageDataset  frames already in memory, e.g. collected from a gymnasium env, with states

`StepBatchSampler` makes the batch at training step s a pure function of (seed, s), so a resumed run
draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
"""File suffixes `ImageFolderDataset` reads, compared case-insensitively."""


class ImageItem(NamedTuple):
    """One item of any image source."""

    image: torch.Tensor
    """(C, H, W) uint8; all zeros when `ok` is False."""
    index: int
    """Position of the item in its source."""
    ok: bool
    """False when the file could not be decoded; `collate_images` drops such items."""
    error: str = ""
    """Why decoding failed (exception type and message); empty when `ok`."""


class ImageBatch(NamedTuple):
    """A collated batch with the failed items removed."""

    images: torch.Tensor
    """(B, C, H, W) uint8, B = number of good items (may be 0)."""
    indices: torch.Tensor
    """(B,) int64 source indices of the good items; index labels or states with it."""
    num_bad: int
    """How many items of the requested batch failed to decode."""
    bad_indices: list[int]
    """Source indices of the failed items (map to files with `source.describe(i)`)."""
    bad_errors: list[str]
    """Why each failed item failed, parallel to `bad_indices`."""


@runtime_checkable
class ImageSource(Protocol):
    """What a trainer or probe needs from an image source."""

    name: str
    labels: torch.Tensor | None
    """(N,) int64 class ids, or None when the source is unlabelled."""
    num_classes: int | None
    states: torch.Tensor | None
    """(N, S) float32 true low-dimensional state (env frames), or None."""
    image_shape: tuple[int, int, int]
    """(C, H, W) of every item."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> ImageItem: ...

    def describe(self, index: int) -> str:
        """Human-readable origin of item `index` (a file path for image folders)."""
        ...


def collate_images(items: Sequence[ImageItem], image_shape: tuple[int, int, int] | None = None) -> ImageBatch:
    """Stack the good items of a batch and report the failed ones; use as a DataLoader `collate_fn`.

    Args:
        items: ImageItems with images of one shape (C, H, W).
        image_shape: (C, H, W) of the source, which lets an empty list (a batch whose every item a sampler skipped)
            collate to an empty batch; without it an empty list is an error.
    Returns:
        ImageBatch with images (B, C, H, W) uint8 and indices (B,) int64 of the items with `ok`.
    """
    if len(items) == 0 and image_shape is None:
        raise ValueError("collate_images got an empty list of items; a batch needs at least one item")
    good = [item for item in items if item.ok]
    bad = [item for item in items if not item.ok]
    if good:
        images = torch.stack([item.image for item in good])  # B x (C, H, W) -> (B, C, H, W)
    else:
        # Every item failed (or none was asked for): keep the image shape so downstream code sees (0, C, H, W).
        shape = tuple(items[0].image.shape) if items else tuple(image_shape)
        images = torch.empty((0, *shape), dtype=torch.uint8)
    return ImageBatch(
        images=images,
        indices=torch.tensor([item.index for item in good], dtype=torch.int64),
        num_bad=len(bad),
        bad_indices=[item.index for item in bad],
        bad_errors=[item.error for item in bad],
    )


class BadImageBudget:
    """Counts distinct failed items in the main process and raises once there are more than `max_bad`.

    Skipping a few unreadable files is fine; a dataset that is mostly corrupt is a broken run and
    must stop with the files named (RELIABILITY.md: "skip and count up to a limit, then raise").
    A file counts once however often it is read: counting reads would stop any run long enough to
    meet the same few bad files every epoch. The known ones are in `bad`, for a sampler to skip.
    """

    def __init__(self, source: ImageSource, max_bad: int, keep: int = 100) -> None:
        if max_bad < 0:
            raise ValueError(f"max_bad must be >= 0, got {max_bad}")
        self.source = source
        self.max_bad = max_bad
        self.keep = keep
        self.bad: set[int] = set()
        """Source indices of the items known to be unreadable."""
        self.bad_items: list[str] = []
        """'<origin>: <error>' for the first `keep` failures."""

    @property
    def num_bad(self) -> int:
        """Distinct unreadable items met so far."""
        return len(self.bad)

    def update(self, batch: ImageBatch) -> list[int]:
        """Record the failures of one batch (see `record`)."""
        return self.record(batch.bad_indices, batch.bad_errors)

    def record(self, indices: Sequence[int], errors: Sequence[str]) -> list[int]:
        """Record failed items (source indices, why each failed); items already known are not counted again.

        Returns:
            The indices not known before, in order.
        Raises:
            RuntimeError: the distinct unreadable items now exceed `max_bad`.
        """
        new = []
        for index, error in zip(indices, errors, strict=True):
            if index in self.bad:
                continue
            self.bad.add(index)
            new.append(index)
            if len(self.bad_items) < self.keep:
                self.bad_items.append(f"{self.source.describe(index)}: {error}")
        if self.num_bad > self.max_bad:
            listed = "\n  ".join(self.bad_items)
            raise RuntimeError(
                f"{self.num_bad} unreadable images in source {self.source.name!r}, more than the allowed "
                f"{self.max_bad}; first ones:\n  {listed}"
            )
        return new

    def state_dict(self) -> dict[str, list]:
        return {"bad_image_indices": sorted(self.bad), "bad_image_items": list(self.bad_items)}

    def load_state_dict(self, state: dict[str, list]) -> None:
        # A checkpoint from before files were told apart holds only a count of reads: those files are met again.
        self.bad = {int(index) for index in state.get("bad_image_indices", [])}
        self.bad_items = list(state.get("bad_image_items", []))


def find_readable(source: ImageSource, count: int) -> tuple[list[int], list[str]]:
    """Decode items in order until `count` of them are readable: a cheap check that a source can feed training.

    Returns:
        The indices of the readable items found (fewer than `count` only when the whole source holds fewer), and
        '<origin>: <error>' for each unreadable item met on the way.
    """
    readable: list[int] = []
    failures: list[str] = []
    for index in range(len(source)):
        item = source[index]
        if item.ok:
            readable.append(index)
            if len(readable) == count:
                break
        else:
            failures.append(f"{source.describe(index)}: {item.error}")
    return readable, failures


# ------------------------------------------------------------------------------------------------
# Image folder


def _scan_images(root: Path) -> list[str]:
    """Relative POSIX paths of every image under `root`, sorted; hidden files and folders skipped."""
    found: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        # Hidden entries are editor/OS debris (.ipynb_checkpoints, macOS '._x.jpg' resource forks).
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append(Path(directory, filename).relative_to(root).as_posix())
    return sorted(found)


def load_image(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """Decode an image file to (3, H, W) uint8, H = W = image_size: RGB, shorter side resized, centre crop.

    Resizing uses Pillow's bicubic filter, which antialiases when shrinking. Raises whatever Pillow
    raises for an unreadable file (OSError, SyntaxError, ValueError, ...).
    """
    with Image.open(path) as opened:
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly; `draft` keeps both sides >= image_size.
        opened.draft("RGB", (image_size, image_size))
        image = opened.convert("RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    new_width = max(image_size, round(width * scale))
    new_height = max(image_size, round(height * scale))
    left = (new_width - image_size) // 2
    top = (new_height - image_size) // 2
    image = image.resize(
        (new_width, new_height),
        Image.Resampling.BICUBIC,
        reducing_gap=3.0,  # shrink in two passes for very large images: faster, same quality
    ).crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


# Exceptions Pillow raises on corrupt, truncated or hostile files. Anything else is a bug and propagates.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images found recursively under a folder, decoded with Pillow to (3, H, W) uint8, H = W = image_size.

    Files: every `.jpg .jpeg .png .webp` (any case) under `root`, at any depth, sorted by relative path
    for determinism; hidden files and folders (name starting with '.') are skipped.

    Labels: when every image lies inside a first-level subfolder (`root/<class>/...`, at any depth
    below it) and there are at least two such subfolders, the subfolder names, sorted, become class
    ids 0..num_classes-1. If any image lies directly in `root`, or all images are in one subfolder,
    the dataset is unlabelled (`labels is None`); images at the top level beside class folders also
    give a warning, since that is usually a mistake.

    Decoding: RGB, shorter side resized to `image_size` (bicubic, antialiased), centre crop
    `image_size x image_size`. A file that cannot be decoded yields a zero image with `ok=False`
    instead of raising, so a DataLoader worker survives it; drop and count such items with
    `collate_images` and `BadImageBudget`.

    Args:
        root: folder to scan.
        image_size: side H = W of the stored square images.
        max_images: keep a random subset of this many images (seeded by `seed`), or all when None.
        seed: seed of the subset.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, max_images: int | None = None, seed: int = 0) -> None:
        self.root = Path(root)
        allowed = ", ".join(IMAGE_EXTENSIONS)
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(self.root)!r} does not exist or is not a directory")
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be None (all images) or >= 1, got {max_images}")
        relative = _scan_images(self.root)
        if not relative:
            raise ValueError(
                f"image folder {str(self.root)!r} contains no images; looked recursively for files ending in "
                f"{allowed} (any case)"
            )
        if max_images is not None and max_images < len(relative):
            chosen = np.sort(np.random.default_rng(seed).choice(len(relative), size=max_images, replace=False))
            subset = [relative[i] for i in chosen]
        else:
            subset = relative
        self.class_names, labels = self._labels_from_folders(relative, subset)
        self.labels = None if labels is None else torch.tensor(labels, dtype=torch.int64)
        self.num_classes = None if self.class_names is None else len(self.class_names)
        self.states = None
        self.name = f"folder:{self.root.name}"
        self.image_size = image_size
        self.image_shape = (3, image_size, image_size)
        # A numpy string array, not a list of str: list items are refcounted objects, and touching them
        # in forked DataLoader workers copies the pages (pytorch/pytorch#13246).
        self._paths = np.array(subset)

    def _labels_from_folders(self, relative: list[str], subset: list[str]) -> tuple[list[str] | None, list[int] | None]:
        """Class names from first-level subfolders (judged on the full scan) and the subset's class ids."""
        top_level = [p for p in relative if "/" not in p]
        class_names = sorted({p.split("/", 1)[0] for p in relative if "/" in p})
        if len(class_names) < 2:
            return None, None
        if top_level:
            warnings.warn(
                f"image folder {str(self.root)!r} has {len(class_names)} subfolders but also {len(top_level)} images "
                f"at its top level (e.g. {top_level[0]!r}); treating it as unlabelled",
                stacklevel=3,
            )
            return None, None
        class_ids = {name: i for i, name in enumerate(class_names)}
        return class_names, [class_ids[p.split("/", 1)[0]] for p in subset]

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        """Absolute path of item `index`."""
        return self.root / str(self._paths[index])

    def describe(self, index: int) -> str:
        return str(self.path(index))

    def __getitem__(self, index: int) -> ImageItem:
        index = int(index)
        try:
            image = load_image(self.path(index), self.image_size)
        except _DECODE_ERRORS as error:
            zeros = torch.zeros(self.image_shape, dtype=torch.uint8)
            return ImageItem(zeros, index, False, f"{type(error).__name__}: {error}")
        return ImageItem(image, index, True)


# ------------------------------------------------------------------------------------------------
# Fractals (FractalDB, Kataoka et al., ACCV 2020: https://arxiv.org/abs/2101.08515)

_MAX_MAPS = 4
_CHAINS = 256  # parallel chaos-game chains per image
_POINTS_PER_PIXEL = 3  # enough to paint the attractor's fine structure without overexposing it
_POINTS_PER_CHUNK = 2_000_000


def _points_per_image(image_size: int) -> int:
    return _CHAINS * max(1, math.ceil(_POINTS_PER_PIXEL * image_size**2 / _CHAINS))


def _chaos_game(
    rng: np.random.Generator,
    params: np.ndarray,
    probs: np.ndarray,
    chains: int,
    steps: int,
    burn_in: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the chaos game for many systems at once, `chains` independent chains per system.

    Args:
        params: (I, maps, 6) float32 affine maps (a, b, c, d, e, f): x' = a x + b y + e, y' = c x + d y + f.
        probs: (I, maps) probability of each map (0 for unused maps).
    Returns:
        x and y (I, steps * chains) float32 coordinates of points on the attractor, and the map that
        produced each point (I, steps * chains) uint8 (used for colouring).
    """
    num_systems, num_maps = probs.shape
    cumulative = np.cumsum(probs, axis=1)[:, :, None].astype(np.float32)  # (I, maps, 1)
    # Parameters as (6, I*maps) so one `take` with flat indices gathers all six for every chain.
    table = np.ascontiguousarray(params.reshape(num_systems * num_maps, 6).T)  # (6, I*maps)
    base = (np.arange(num_systems) * num_maps)[:, None]  # (I, 1) offset of each system's maps
    # Start every chain at the fixed point of map 0, which lies on the attractor, so burn-in only
    # has to spread the chains, not pull them in from far away. Contractive maps make I - A invertible.
    a, b, c, d, e, f = (params[:, 0, j].astype(np.float64) for j in range(6))
    det = (1 - a) * (1 - d) - b * c
    x = np.repeat((((1 - d) * e + b * f) / det).astype(np.float32)[:, None], chains, axis=1)  # (I, chains)
    y = np.repeat(((c * e + (1 - a) * f) / det).astype(np.float32)[:, None], chains, axis=1)
    xs = np.empty((num_systems, steps, chains), dtype=np.float32)
    ys = np.empty((num_systems, steps, chains), dtype=np.float32)
    maps = np.empty((num_systems, steps, chains), dtype=np.uint8)
    for step in range(burn_in + steps):
        u = rng.random((num_systems, chains), dtype=np.float32)
        # Inverse-CDF choice of the map: count the cumulative probabilities below u (the last one is
        # skipped, so rounding can never pick an index past the used maps).
        k = np.zeros((num_systems, chains), dtype=np.int64)
        for j in range(num_maps - 1):
            k += u >= cumulative[:, j]
        ma, mb, mc, md, me, mf = np.take(table, k + base, axis=1)  # each (I, chains)
        x, y = ma * x + mb * y + me, mc * x + md * y + mf
        if step >= burn_in:
            xs[:, step - burn_in] = x
            ys[:, step - burn_in] = y
            maps[:, step - burn_in] = k
    return xs.reshape(num_systems, -1), ys.reshape(num_systems, -1), maps.reshape(num_systems, -1)


def _fit_to_pixels(
    x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator | None, margin: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Map attractor points to integer pixel coordinates, keeping the aspect ratio.

    Without `rng` the attractor is centred and fills the image; with it, each image gets a random
    scale in [0.6, 1], a random offset within the image and a horizontal flip with probability 1/2.

    Args:
        x, y: (I, points) float32 point coordinates.
    Returns:
        column (I, points) and row (I, points) int64 pixel indices in [0, size).
    """
    num = x.shape[0]
    low_x, low_y = x.min(axis=1), y.min(axis=1)  # (I,)
    extent_x = np.maximum(x.max(axis=1) - low_x, 1e-6)
    extent_y = np.maximum(y.max(axis=1) - low_y, 1e-6)
    usable = size - 2 * margin - 1e-3
    scale = usable / np.maximum(extent_x, extent_y)  # (I,) largest scale that fits both axes
    if rng is not None:
        scale = scale * rng.uniform(0.6, 1.0, size=num)
    fraction = rng.random((num, 2)) if rng is not None else np.full((num, 2), 0.5)
    # Offset = margin + a fraction of the room the scaled attractor leaves free.
    offset_x = margin + (usable - extent_x * scale) * fraction[:, 0]
    offset_y = margin + (usable - extent_y * scale) * fraction[:, 1]
    scale = scale.astype(np.float32)[:, None]
    column = ((x - low_x[:, None]) * scale + offset_x.astype(np.float32)[:, None]).astype(np.int64)
    row = ((y - low_y[:, None]) * scale + offset_y.astype(np.float32)[:, None]).astype(np.int64)
    np.clip(column, 0, size - 1, out=column)
    np.clip(row, 0, size - 1, out=row)
    if rng is not None:
        flip = rng.random(num) < 0.5
        column[flip] = size - 1 - column[flip]
    # Image rows grow downwards; flip y so the attractor is drawn the way it is usually plotted.
    return column, size - 1 - row


def _spectral_norm(params: np.ndarray) -> np.ndarray:
    """Largest singular value of each 2x2 linear part; params (..., 6) -> (...)."""
    matrices = params[..., :4].reshape(*params.shape[:-1], 2, 2).astype(np.float64)
    return np.linalg.norm(matrices, ord=2, axis=(-2, -1))


def _map_probabilities(params: np.ndarray, used: np.ndarray) -> np.ndarray:
    """FractalDB's map probabilities, proportional to |det| of each used map; (I, maps) float32."""
    det = np.abs(params[..., 0] * params[..., 3] - params[..., 1] * params[..., 2]) * used
    return (det / np.maximum(det.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


def sample_fractal_systems(
    num_systems: int,
    rng: np.random.Generator,
    min_filling: float = 0.12,
    check_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample random iterated function systems whose attractors look like shapes, not dust or lines.

    Each system has 2-4 affine maps with parameters uniform in [-1, 1] (FractalDB). A system is kept
    only if every map is contractive (largest singular value < 1, so the attractor exists and the chaos
    game stays bounded) and its attractor, drawn at `check_size` px and fitted to the image, covers at
    least `min_filling` of the pixels (FractalDB's "filling rate"; rejects degenerate lines and dots).

    Returns:
        params (num_systems, 4, 6) float32 maps (unused maps are zeros) and used (num_systems, 4) bool.
    """
    kept_params: list[np.ndarray] = []
    kept_used: list[np.ndarray] = []
    kept = 0
    while kept < num_systems:
        batch = max(64, 8 * (num_systems - kept))
        params = rng.uniform(-1.0, 1.0, size=(batch, _MAX_MAPS, 6)).astype(np.float32)
        num_maps = rng.integers(2, _MAX_MAPS + 1, size=batch)
        used = np.arange(_MAX_MAPS)[None, :] < num_maps[:, None]  # (batch, 4)
        params *= used[..., None]
        contractive = ((_spectral_norm(params) < 0.97) | ~used).all(axis=1)
        # Map probabilities are proportional to |det|: all-singular systems would divide by zero.
        det = np.abs(params[..., 0] * params[..., 3] - params[..., 1] * params[..., 2]).sum(axis=1)
        contractive &= det > 1e-3
        params, used = params[contractive], used[contractive]
        if len(params) == 0:
            continue
        x, y, _ = _chaos_game(rng, params, _map_probabilities(params, used), chains=128, steps=16, burn_in=12)
        column, row = _fit_to_pixels(x, y, check_size, rng=None)
        flat = row * check_size + column + np.arange(len(params))[:, None] * check_size**2  # (I, points)
        hits = np.bincount(flat.ravel(), minlength=len(params) * check_size**2).reshape(len(params), -1)
        filling = (hits > 0).mean(axis=1)
        good = filling >= min_filling
        kept_params.append(params[good])
        kept_used.append(used[good])
        kept += int(good.sum())
    return np.concatenate(kept_params)[:num_systems], np.concatenate(kept_used)[:num_systems]


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1] of one shape; returns shape + (3,)."""
    i = np.floor(hue * 6).astype(np.int64) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    rgb = np.zeros((*hue.shape, 3))
    for sector, (r, g, b) in enumerate(choices):
        mask = i == sector
        rgb[mask] = np.stack([r[mask], g[mask], b[mask]], axis=-1)
    return rgb


def render_fractals(
    params: np.ndarray,
    used: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    jitter: float = 0.05,
) -> np.ndarray:
    """Draw one random instance of each given system.

    An instance perturbs every used map parameter by uniform noise in [-jitter, jitter] (re-scaled to
    stay contractive), gives each map a random colour (pixels take the mean colour of the maps that
    landed there, brightness from the log hit count) and places the attractor with a random scale,
    offset and horizontal flip on a black background.

    Args:
        params: (I, 4, 6) maps, used: (I, 4) bool, as from `sample_fractal_systems`.
    Returns:
        (I, 3, image_size, image_size) uint8.
    """
    num = params.shape[0]
    noise = rng.uniform(-jitter, jitter, size=params.shape).astype(np.float32)
    params = (params + noise) * used[..., None]
    norm = _spectral_norm(params)  # (I, 4)
    params[..., :4] *= np.minimum(1.0, 0.97 / np.maximum(norm, 1e-12))[..., None].astype(np.float32)
    steps = _points_per_image(image_size) // _CHAINS
    x, y, maps = _chaos_game(rng, params, _map_probabilities(params, used), chains=_CHAINS, steps=steps, burn_in=12)
    column, row = _fit_to_pixels(x, y, image_size, rng=rng)
    pixels = image_size**2
    # One histogram for all images and maps at once: bin = (image, pixel, map).
    flat = ((np.arange(num)[:, None] * pixels + row * image_size + column) * _MAX_MAPS + maps).ravel()
    hits = np.bincount(flat, minlength=num * pixels * _MAX_MAPS).reshape(num, pixels, _MAX_MAPS).astype(np.float32)
    colours = _hsv_to_rgb(
        rng.random((num, _MAX_MAPS)), rng.uniform(0.5, 1.0, (num, _MAX_MAPS)), rng.uniform(0.7, 1.0, (num, _MAX_MAPS))
    ).astype(np.float32)  # (I, 4, 3)
    total = hits.sum(axis=2)  # (I, pixels)
    mean_colour = np.matmul(hits, colours) / np.maximum(total, 1.0)[..., None]  # (I, pixels, 4) @ (I, 4, 3)
    brightness = np.log1p(total) / np.log1p(total.max(axis=1, keepdims=True))  # (I, pixels) in [0, 1]
    # Every hit pixel is clearly visible (>= 0.35); dense parts brighter.
    brightness = np.where(total > 0, 0.35 + 0.65 * brightness, 0.0)
    image = np.clip(mean_colour * brightness[..., None] * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (I, pixels, 3)
    return image.reshape(num, image_size, image_size, 3).transpose(0, 3, 1, 2)  # -> (I, 3, H, W)


class FractalDataset(torch.utils.data.Dataset):
    """Synthetic formula-driven images: each class a random iterated function system (FractalDB).

    Generated once at construction with numpy's seeded generator, so the same seed gives identical
    tensors and pretraining needs no download. Item i belongs to class i // per_class.

    Args:
        num_classes: number of random systems (classes).
        per_class: instances drawn per class.
        image_size: side H = W of the (3, H, W) images.
        seed: seed of everything (systems and instances).
    """

    def __init__(self, num_classes: int, per_class: int, image_size: int, seed: int) -> None:
        if num_classes < 1 or per_class < 1:
            raise ValueError(f"num_classes and per_class must be >= 1, got {num_classes} and {per_class}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels for a fractal to be visible, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        rng = np.random.default_rng(seed)
        params, used = sample_fractal_systems(num_classes, rng)
        self.system_params = params  # (num_classes, 4, 6): the class definitions, for inspection
        self.system_used = used
        labels = np.repeat(np.arange(num_classes), per_class)  # (N,)
        # Render in chunks of images to bound the memory of the point clouds (a few tens of bytes a point).
        # The chunk depends only on image_size, so the random draws, and the images, depend only on the seed.
        chunk = max(1, _POINTS_PER_CHUNK // _points_per_image(image_size))
        images = [
            render_fractals(params[labels[start : start + chunk]], used[labels[start : start + chunk]], image_size, rng)
            for start in range(0, len(labels), chunk)
        ]
        self.images = torch.from_numpy(np.concatenate(images))  # (N, 3, H, W) uint8
        self.labels = torch.from_numpy(labels).to(torch.int64)
        self.num_classes = num_classes
        self.per_class = per_class
        self.states = None
        self.name = f"fractal{num_classes}x{per_class}"
        self.image_shape = (3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}] (class {index // self.per_class})"

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(self.images[index], int(index), True)


# ------------------------------------------------------------------------------------------------
# In-memory frames

_CHANNEL_COUNTS = (1, 3, 4)


class TensorImageDataset(torch.utils.data.Dataset):
    """Frames already in memory (e.g. collected from a gymnasium env), with optional labels and states.

    Layout: 4-D uint8 `(N, H, W, C)` or `(N, C, H, W)`, numpy or torch. With `channels_last=None` the
    layout is inferred: channels-last when the last dim is 1, 3 or 4 (what gymnasium renders), else
    channels-first when dim 1 is 1, 3 or 4, else an error. Pass `channels_last` explicitly when a frame
    could be read both ways (e.g. a 3-pixel-wide image). Grey frames (C = 1) are repeated to RGB and
    the alpha channel of RGBA frames is dropped, so items are always (3, H, W).

    Args:
        images: (N, H, W, C) or (N, C, H, W) uint8.
        labels: (N,) integer class ids, or None.
        states: (N, S) or (N,) true low-dimensional states, stored as float32, or None.
        groups: (N,) integer group of each frame (its episode), or None: the probes hold out whole groups.
        name: name shown in logs.
        channels_last: the layout, or None to infer it as above.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | None = None,
        states: np.ndarray | torch.Tensor | None = None,
        name: str = "tensor",
        channels_last: bool | None = None,
        groups: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a 4-D uint8 array (N, H, W, C) or (N, C, H, W), got dtype {images.dtype} "
                f"and shape {tuple(images.shape)}"
            )
        if channels_last is None:
            if images.shape[3] in _CHANNEL_COUNTS:
                channels_last = True
            elif images.shape[1] in _CHANNEL_COUNTS:
                channels_last = False
            else:
                raise ValueError(
                    f"cannot tell the channel dim of images with shape {tuple(images.shape)}: neither dim 3 "
                    f"(channels-last) nor dim 1 (channels-first) is 1, 3 or 4"
                )
        if channels_last:
            images = images.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        channels = images.shape[1]
        if channels not in _CHANNEL_COUNTS:
            raise ValueError(f"images must have 1, 3 or 4 channels, got {channels} (shape {tuple(images.shape)})")
        if channels == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> RGB
        elif channels == 4:
            images = images[:, :3]  # drop alpha
        self.images = images.contiguous()  # (N, 3, H, W) uint8
        count = len(self.images)
        if count == 0:
            raise ValueError("images is empty; a dataset needs at least one frame")
        self.labels = None
        self.num_classes = None
        if labels is not None:
            self.labels = torch.as_tensor(labels)
            if self.labels.shape != (count,) or self.labels.is_floating_point() or self.labels.is_complex():
                raise ValueError(
                    f"labels must be integer class ids of shape ({count},), got dtype {self.labels.dtype} and "
                    f"shape {tuple(self.labels.shape)}"
                )
            self.labels = self.labels.to(torch.int64)
            if int(self.labels.min()) < 0:
                raise ValueError(f"labels must be >= 0, got minimum {int(self.labels.min())}")
            self.num_classes = int(self.labels.max()) + 1
        self.states = None
        if states is not None:
            self.states = torch.as_tensor(states).to(torch.float32)
            if self.states.ndim == 1:
                self.states = self.states[:, None]  # (N,) -> (N, 1)
            if self.states.ndim != 2 or len(self.states) != count:
                raise ValueError(f"states must have shape ({count}, S) or ({count},), got {tuple(self.states.shape)}")
        self.groups = None if groups is None else torch.as_tensor(groups)
        if self.groups is not None and (self.groups.shape != (count,) or self.groups.is_floating_point()):
            raise ValueError(
                f"groups must be integers of shape ({count},), got dtype {self.groups.dtype} and shape "
                f"{tuple(self.groups.shape)}"
            )
        self.name = name
        self.image_shape = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(self.images[index], int(index), True)


# ------------------------------------------------------------------------------------------------
# Step-addressed batch sampling


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches whose content at training step s depends only on (seed, s), for exact resume.

    Epoch e = s // steps_per_epoch uses the permutation of a numpy generator seeded with (seed, e);
    step s takes slice (s mod steps_per_epoch) of it. The last partial batch of an epoch is dropped, so
    every batch has `batch_size` items and each index appears at most once per epoch (exactly once
    when batch_size divides num_items). Restarting at `start_step` yields the same batches as an
    uninterrupted run from step 0.

    Args:
        num_items: dataset length.
        batch_size: items per batch, <= num_items.
        seed: seed, >= 0.
        start_step: first step to yield.
        total_steps: stop before this step; None iterates forever.
        rows: yield only these positions of each batch: one process's share of a batch split across several
            (the batches themselves stay those of `batch_size`, so the shares put together are one batch).
        skip: indices left out of every batch (read when each batch is drawn, so it may grow during a run):
            items known to be unreadable, which would only fail again. A batch may then be short, even empty.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        total_steps: int | None = None,
        rows: slice = slice(None),
        skip: Collection[int] = (),
    ) -> None:
        if batch_size < 1 or num_items < batch_size:
            raise ValueError(f"batch_size must be in [1, num_items={num_items}], got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if start_step < 0 or (total_steps is not None and total_steps < start_step):
            raise ValueError(
                f"need 0 <= start_step <= total_steps, got start_step={start_step}, total_steps={total_steps}"
            )
        super().__init__()
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.rows = rows
        self.skip = skip
        self.steps_per_epoch = num_items // batch_size
        self._cached_epoch = -1
        self._cached_permutation = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """(num_items,) int64 order of epoch `epoch`."""
        if epoch != self._cached_epoch:
            self._cached_permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            self._cached_epoch = epoch
        return self._cached_permutation

    def batch_indices(self, step: int) -> list[int]:
        """The `batch_size` dataset indices of training step `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield [index for index in self.batch_indices(step)[self.rows] if index not in self.skip]
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("StepBatchSampler with total_steps=None is infinite and has no length")
        return self.total_steps - self.start_step
