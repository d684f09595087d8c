"""The threshold slider's fast path: what does not depend on the threshold, computed once per map.

:func:`postprocess.segment_probability` labels the thresholded grid at every change. Here
every step of it is answered from images and trees built once per probability map, using
three facts about a probability ``p`` on a ``[z, y, x]`` grid:

* **Holes.** Filling the enclosed holes of ``{p >= t}`` (background 6-connected to the
  grid's faces stays open) gives ``{fill(p) >= t}``, where ``fill(p)(v)`` is the lowest, over
  the 6-connected paths from ``v`` out of the grid, of the highest probability on the path.
* **Seeds** (Hirsch et al.). The 26-connected components of ``{p >= t}`` holding a seed
  (``p > seed_fraction x max``) are ``{reach(p) >= t}``, where ``reach(p)(v)`` is the highest,
  over the 26-connected paths from ``v`` to a seed, of the lowest probability on the path.
* **Smallest piece.** The 26-connected components of ``{g >= t}`` are those of a maximum
  spanning forest of ``g`` (edge value: the lower of its two voxels) kept to the edges
  ``>= t``: a forest of at most as many edges as voxels, labelled per change in compiled
  code instead of the grid.

The paths' lowest-highest values are read off minimum / maximum spanning trees of the
voxels' graphs (scipy.sparse.csgraph, exact for any tie order), so every threshold gives,
voxel for voxel, the direct computation's mask.

Only voxels that any served threshold can keep are indexed: the *universe*, holes filled,
of voxels at or above the *floor*, the lowest threshold the index serves (by default the
slider's lowest value, 0.05, times the map's maximum, raised in 0.01 steps while more than
``max_voxels`` voxels would pass it). A lower threshold is answered by the direct
computation, as is a threshold on a map with no finite positive maximum (one holding NaN).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ..core.geometry import Geometry
from .postprocess import ThresholdSettings, fill_holes, segment_probability

#: The lowest threshold the sliders offer (absolute, or fraction of the maximum).
LOWEST_THRESHOLD = 0.05
#: Most voxels indexed: bounds the index's memory (its 26-neighbour pairs and spanning
#: trees take about 0.5 GB while building at this size) and its build time.
MAX_INDEXED_VOXELS = 1_000_000
#: Steps by which the floor rises until the voxels above it fit ``max_voxels``.
FLOOR_STEP = 0.01

_FACE_OFFSETS = ((0, 0, 1), (0, 1, 0), (1, 0, 0))
_HALF_26_OFFSETS = tuple((dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                         if (dz, dy, dx) > (0, 0, 0))


class ThresholdIndex:
    """A probability map prepared for any threshold at or above its floor.

    Attributes:
        shape: the grid ``(nz, ny, nx)``.
        peak: the map's maximum (the relative threshold's reference).
        floor: lowest absolute probability served (``None`` when nothing is indexed: no
            finite positive maximum, or a non-float map).
        voxels: flat indices (C order, ``[z, y, x]``) of the universe, ascending.
        box: ``(z, y, x)`` slices of the universe's bounding box (``None`` when empty).
    """

    def __init__(self, probability: np.ndarray, geometry: Geometry, lowest_threshold: float = LOWEST_THRESHOLD,
                 max_voxels: int = MAX_INDEXED_VOXELS):
        probability = np.asarray(probability)
        if probability.shape != geometry.shape_zyx:
            raise ValueError(f"probability shape {probability.shape} does not match grid {geometry.shape_zyx}")
        self.geometry = geometry
        self.shape = probability.shape
        self._probability = probability
        self.peak = float(np.max(probability)) if probability.size else 0.0
        self.floor = None
        self.voxels = np.zeros(0, dtype=np.int64)
        self.box = None
        self._images: dict = {}
        self._forests: dict = {}
        if probability.dtype.kind != "f" or not (np.isfinite(self.peak) and self.peak > 0.0):
            return
        self._scalar = probability.dtype.type
        self.floor = _floor(probability, self._scalar(lowest_threshold * min(self.peak, 1.0)), max_voxels)
        universe = fill_holes(probability >= self.floor)
        self.voxels = np.flatnonzero(universe)
        self.box = _bounding_box(self.voxels, self.shape)
        self._values = probability.ravel()[self.voxels]
        coords = np.unravel_index(self.voxels, self.shape)
        self._face_pairs, self._exits = self._pairs(coords, _FACE_OFFSETS, with_exits=True)
        self._pairs_26, _ = self._pairs(coords, _HALF_26_OFFSETS)

    # ------------------------------------------------------------------------------ queries
    def serves(self, settings: ThresholdSettings) -> bool:
        """Whether ``settings`` are answered from the index (else :meth:`mask` computes directly)."""
        if self.floor is None:
            return False
        return self._scalar(self.level(settings)) >= self.floor

    def level(self, settings: ThresholdSettings) -> float:
        """The absolute probability threshold ``settings`` stand for."""
        return settings.threshold * self.peak if settings.relative else settings.threshold

    def kept(self, settings: ThresholdSettings) -> np.ndarray:
        """Which universe voxels (``self.voxels``) the mask holds, as a bool array; only
        for settings the index serves."""
        settings.validate()
        if not self.serves(settings):
            raise ValueError(f"threshold {self.level(settings):g} is below the index's floor {self.floor:g}")
        level = self.level(settings)
        if settings.min_component_ml <= 0:
            return self._image(settings) >= level
        voxels, labels = self._forest(settings).components(level)
        volumes_ml = np.bincount(labels) * self.geometry.voxel_volume_ml
        kept = np.zeros(len(self.voxels), dtype=bool)
        kept[voxels[(volumes_ml >= settings.min_component_ml)[labels]]] = True
        return kept

    def mask(self, settings: ThresholdSettings) -> np.ndarray:
        """The uint8 mask ``[z, y, x]`` of ``settings``: equal to ``segment_probability``."""
        if not self.serves(settings):
            return segment_probability(self._probability, self.geometry, settings)
        out = np.zeros(self.shape, dtype=np.uint8)
        out.ravel()[self.voxels[self.kept(settings)]] = 1
        return out

    # ------------------------------------------------------------------------------ images
    def _image(self, settings: ThresholdSettings) -> np.ndarray:
        """The grey image whose upper level sets are the masks of ``settings`` (any threshold)."""
        key = (settings.relative, settings.seed_fraction if settings.relative else None, settings.fill_holes)
        if key not in self._images:
            image = self._values
            if settings.relative:
                image = self._reach_from_seeds(settings.seed_fraction)
            if settings.fill_holes:
                image = self._filled(image)
            self._images[key] = image
        return self._images[key]

    def _filled(self, values: np.ndarray) -> np.ndarray:
        """fill(values) on the universe: the minimax over 6-connected paths to its outside.

        A path leaving the universe meets only voxels whose filled value is below the
        floor, so it ends, for every served threshold, where it leaves the universe.
        """
        a, b = self._face_pairs
        return _path_bottleneck(len(values), a, b, np.maximum(values[a], values[b]),
                                self._exits, values[self._exits], lowest_highest=True, dtype=values.dtype)

    def _reach_from_seeds(self, seed_fraction: float) -> np.ndarray:
        """reach(p) on the universe: the maximin over 26-connected paths to a seed voxel."""
        seeds = np.flatnonzero(self._values > seed_fraction * self.peak)
        a, b = self._pairs_26
        edge_values = np.minimum(self._values[a], self._values[b])
        useful = edge_values >= self.floor
        return _path_bottleneck(len(self._values), a[useful], b[useful], edge_values[useful],
                                seeds, self._values[seeds], lowest_highest=False, dtype=self._values.dtype)

    def _forest(self, settings: ThresholdSettings) -> _SpanningForest:
        image = self._image(settings)
        key = id(image)
        if key not in self._forests:
            a, b = self._pairs_26
            edge_values = np.minimum(image[a], image[b])
            useful = edge_values >= self.floor
            self._forests[key] = _SpanningForest(image, a[useful], b[useful], edge_values[useful])
        return self._forests[key]

    # ------------------------------------------------------------------------------ neighbours
    def _pairs(self, coords, offsets, with_exits: bool = False):
        """Pairs ``(a, b)`` of universe positions that are neighbours along ``offsets`` (and
        their opposites), as int32 arrays; with ``with_exits`` the positions 6-adjacent to a voxel outside the
        universe or on the grid's faces."""
        n = len(self.voxels)
        strides = np.array([self.shape[1] * self.shape[2], self.shape[2], 1], dtype=np.int64)
        degree = np.zeros(n, dtype=np.int8) if with_exits else None
        firsts, seconds = [], []
        for offset in offsets:
            inside = np.ones(n, dtype=bool)
            for axis, step in enumerate(offset):
                if step:
                    moved = coords[axis] + step
                    inside &= (moved >= 0) & (moved < self.shape[axis])
            candidates = np.flatnonzero(inside)
            target = self.voxels[candidates] + int(np.dot(offset, strides))
            found = np.minimum(np.searchsorted(self.voxels, target), n - 1)
            hit = self.voxels[found] == target
            firsts.append(candidates[hit].astype(np.int32))
            seconds.append(found[hit].astype(np.int32))
            if with_exits:
                degree[candidates[hit]] += 1
                degree[found[hit]] += 1
        pairs = (np.concatenate(firsts), np.concatenate(seconds))
        exits = np.flatnonzero(degree < 2 * len(offsets)) if with_exits else None
        return pairs, exits


class _SpanningForest:
    """A maximum spanning forest of the universe's 26-neighbour graph under a grey ``image``
    (edge value: the lower voxel), on the voxels ranked from the highest value down, so that
    a threshold's voxels and edges are prefixes."""

    def __init__(self, image: np.ndarray, a: np.ndarray, b: np.ndarray, edge_values: np.ndarray):
        self.order = np.argsort(image)[::-1]
        self.descending_image = image[self.order]
        rank = np.empty(len(image), dtype=np.int64)
        rank[self.order] = np.arange(len(image))
        rows, cols, values = _spanning_tree(len(image), a, b, edge_values, maximum=True)
        by_value = np.argsort(values)[::-1]
        self.rows, self.cols, self.descending_edges = rank[rows[by_value]], rank[cols[by_value]], values[by_value]

    def components(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The universe positions of the voxels ``>= level`` and their component labels
        (0..n-1) in the forest kept to the edges ``>= level``."""
        level = self.descending_image.dtype.type(level)
        voxels = int(np.count_nonzero(self.descending_image >= level))
        edges = int(np.count_nonzero(self.descending_edges >= level))
        graph = sparse.csr_matrix((np.ones(edges, dtype=np.int8), (self.rows[:edges], self.cols[:edges])),
                                  shape=(voxels, voxels))
        return self.order[:voxels], csgraph.connected_components(graph, directed=False)[1]


def _spanning_tree(n: int, a: np.ndarray, b: np.ndarray, edge_values: np.ndarray, maximum: bool):
    """A minimum (or maximum) spanning forest of ``n`` nodes; returns ``(rows, cols, values)``.

    csgraph takes positive weights and drops zeros, so each edge is weighted by a positive
    integer in the order of its value (equal for equal values): any spanning tree for those
    weights is one for the values.
    """
    if len(a) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, edge_values[:0]
    weights, values_of = _order_weights(edge_values, maximum)
    tree = csgraph.minimum_spanning_tree(sparse.csr_matrix((weights, (a, b)), shape=(n, n))).tocoo()
    return tree.row.astype(np.int64), tree.col.astype(np.int64), values_of(tree.data)


def _order_weights(values: np.ndarray, descending: bool):
    """Positive float64 integers in the order of ``values`` (reversed with ``descending``),
    equal for equal values, and the function from such weights back to the values."""
    if values.dtype == np.float32:  # the bit pattern, sign-folded, orders float32 values: no sort
        bits = values.view(np.uint32).astype(np.int64)
        key = np.where(bits >= 2 ** 31, 2 ** 32 - 1 - bits, bits + 2 ** 31)

        def decode(k):
            return np.where(k >= 2 ** 31, k - 2 ** 31, 2 ** 32 - 1 - k).astype(np.uint32).view(np.float32)
    else:
        distinct, key = np.unique(values, return_inverse=True)

        def decode(k):
            return distinct[k]
    low, high = int(key.min()), int(key.max())
    if descending:
        return (high - key + 1).astype(np.float64), lambda w: decode(high + 1 - w.astype(np.int64))
    return (key - low + 1).astype(np.float64), lambda w: decode(w.astype(np.int64) + low - 1)


def _path_bottleneck(n: int, a, b, edge_values, anchors, anchor_values, lowest_highest: bool, dtype):
    """For every node, over the paths to any anchor (an edge from each anchor to a virtual
    root, valued ``anchor_values``): the lowest highest edge value (``lowest_highest``) or
    the highest lowest. Nodes without a path get -inf."""
    root = n
    rows = np.concatenate([a, anchors])
    cols = np.concatenate([b, np.full(len(anchors), root, dtype=np.int64)])
    values = np.concatenate([edge_values, anchor_values]).astype(dtype)
    out = np.full(n, -np.inf, dtype=dtype)
    if len(rows) == 0:
        return out
    tree_rows, tree_cols, tree_values = _spanning_tree(n + 1, rows, cols, values, maximum=not lowest_highest)
    graph = sparse.csr_matrix((np.ones(len(tree_rows), np.int8), (tree_rows, tree_cols)), shape=(n + 1, n + 1))
    _, parent = csgraph.breadth_first_order(graph, root, directed=False, return_predecessors=True)
    reached = parent >= 0
    reached[root] = True
    child = np.where(parent[tree_rows] == tree_cols, tree_rows, tree_cols)
    neutral = -np.inf if lowest_highest else np.inf
    combine = np.maximum if lowest_highest else np.minimum
    bottleneck = np.full(n + 1, neutral, dtype=dtype)
    bottleneck[child] = tree_values
    ancestor = np.where(reached, parent, root)
    ancestor[root] = root
    while True:  # pointer jumping: after k rounds each node holds its first 2^k edges to the root
        done = ancestor == root
        if done.all():
            break
        bottleneck = np.where(done, bottleneck, combine(bottleneck, bottleneck[ancestor]))
        ancestor = ancestor[ancestor]
    out[reached[:n]] = bottleneck[:n][reached[:n]]
    return out


def _floor(probability: np.ndarray, lowest, max_voxels: int):
    """The lowest threshold served: ``lowest``, raised to the next multiple of ``FLOOR_STEP``
    while more than ``max_voxels`` voxels are at or above it."""
    scalar = probability.dtype.type
    top = scalar(np.max(probability))
    floor = lowest
    step = int(np.floor(float(lowest) / FLOOR_STEP + 1e-3))
    while floor < top and np.count_nonzero(probability >= floor) > max_voxels:
        step += 1
        floor = scalar(min(float(top), step * FLOOR_STEP))
    return floor


def _bounding_box(flat: np.ndarray, shape) -> tuple[slice, ...] | None:
    if flat.size == 0:
        return None
    coords = np.unravel_index(flat, shape)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
