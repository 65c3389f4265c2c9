"""Standardisation statistics of dense features, computed on the train split only.

Each dense feature gets the mean and (population) standard deviation of its
values *after the log1p part of its transform*: a ``log1p_standardize`` feature
stores the moments of ``log1p(x)``, a ``standardize`` (or ``none``) feature those
of ``x``. Statistics come from train only, so valid/test never leak into the
features the model sees.

The split is streamed column-wise, batch by batch (memory stays bounded by one
record batch), and batch moments are merged with Chan et al.'s pairwise update in
float64: the result matches ``np.mean`` / ``np.std`` over the whole split to
rounding, without the cancellation a naive sum-of-squares suffers when the mean
is large next to the spread.

:class:`DenseStats` round-trips through JSON (:meth:`DenseStats.to_dict`) because
the export bundle carries it: a server applies exactly the training transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ranking.data.errors import DataError
from ranking.data.files import csv_column_types, iter_record_batches
from ranking.schema import Feature, Schema

FORMAT_VERSION = 1
_LOG1P_TRANSFORMS = ("log1p", "log1p_standardize")
_STANDARDIZE_TRANSFORMS = ("standardize", "log1p_standardize")


@dataclass(frozen=True)
class Moments:
    """Moments of one dense feature (after its log1p part) over the train split."""

    transform: str
    mean: float
    std: float
    count: int

    @property
    def scale(self) -> float:
        """The divisor of standardisation (a constant feature divides by 1, not 0)."""
        return self.std if self.std > 0 else 1.0


class DenseStats:
    """Per dense feature: its transform and the train moments that transform uses.

    Args:
        moments: feature name -> :class:`Moments`.

    Example::

        stats = compute_dense_stats(schema)
        x = stats.apply("price", np.array([0.0, 9.0]))   # float32 [2]
        DenseStats.from_dict(json.loads(json.dumps(stats.to_dict())))  # same stats
    """

    def __init__(self, moments: dict[str, Moments]) -> None:
        self.moments = dict(moments)

    def __getitem__(self, name: str) -> Moments:
        return self.moments[name]

    def __contains__(self, name: object) -> bool:
        return name in self.moments

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DenseStats) and self.moments == other.moments

    def __repr__(self) -> str:
        return f"DenseStats({self.moments!r})"

    def apply(self, feature: Feature | str, x: np.ndarray) -> np.ndarray:
        """Transform raw values of one dense feature; float32, same shape as ``x``.

        ``none``: x; ``log1p``: log1p(x); ``standardize``: (x - mean) / std;
        ``log1p_standardize``: (log1p(x) - mean) / std. A zero std divides by 1.
        A :class:`Feature` brings its own transform; a name uses the stored one.
        """
        name = feature if isinstance(feature, str) else feature.name
        if name not in self.moments:
            raise KeyError(f"no dense statistics for feature {name!r}")
        m = self.moments[name]
        transform = m.transform if isinstance(feature, str) else feature.transform
        y = np.asarray(x, dtype=np.float64)
        if transform in _LOG1P_TRANSFORMS:
            y = np.log1p(y)
        if transform in _STANDARDIZE_TRANSFORMS:
            y = (y - m.mean) / m.scale
        return y.astype(np.float32)

    def merged(self, other: DenseStats) -> DenseStats:
        """The moments of both samples together (Chan et al.'s pairwise update): the
        statistics of two train splits' rows together, from each split's own (rows
        in both count twice).

        A feature in one only keeps its moments. Raises ValueError for a feature
        whose transform differs (its moments describe different values).
        """
        out = dict(self.moments)
        for name, b in other.moments.items():
            a = out.get(name)
            if a is None:
                out[name] = b
                continue
            if a.transform != b.transform:
                raise ValueError(
                    f"dense feature {name!r}: transform {a.transform!r} in one set of "
                    f"statistics, {b.transform!r} in the other"
                )
            both = _Running.of(a)
            both.combine(_Running.of(b))
            out[name] = Moments(a.transform, float(both.mean), both.std, both.n)
        return DenseStats(out)

    # ---- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"version": 1, "features": {name: {transform, mean, std, count}}}``."""
        return {
            "version": FORMAT_VERSION,
            "features": {
                name: {"transform": m.transform, "mean": m.mean, "std": m.std, "count": m.count}
                for name, m in self.moments.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenseStats:
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"dense stats format version {d.get('version')!r} is not {FORMAT_VERSION}"
            )
        return cls(
            {
                name: Moments(
                    str(v["transform"]), float(v["mean"]), float(v["std"]), int(v["count"])
                )
                for name, v in d["features"].items()
            }
        )


class _Running:
    """Count, mean and sum of squared deviations (M2), merged batch by batch."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    @classmethod
    def of(cls, m: Moments) -> _Running:
        r = cls()
        r.n, r.mean, r.m2 = int(m.count), float(m.mean), float(m.std) ** 2 * m.count
        return r

    def add(self, x: np.ndarray) -> None:
        if x.size:
            batch = _Running()
            batch.n, batch.mean = int(x.size), float(x.mean())
            batch.m2 = float(np.square(x - batch.mean).sum())
            self.combine(batch)

    def combine(self, other: _Running) -> None:
        """Merge ``other``'s sample into this one (Chan et al.'s pairwise update)."""
        n = self.n + other.n
        if other.n == 0:
            return
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


def compute_dense_stats(schema: Schema, batch_rows: int = 65_536) -> DenseStats:
    """Stream the train split's dense columns once and return their moments.

    Raises:
        DataError: a dense value that is null or not finite after log1p (e.g. a
            ``log1p`` feature below -1), naming file, column and row; or an empty
            train split.
    """
    features = schema.dense()
    if not features:
        return DenseStats({})
    names = [f.name for f in features]
    running = {f.name: _Running() for f in features}
    types = csv_column_types(schema)
    paths = schema.split_paths("train")
    for path in paths:
        for offset, rb in iter_record_batches(path, names, batch_rows, types):
            for f in features:
                col = rb.column(f.name)
                x = _as_float64(col)
                if f.transform in _LOG1P_TRANSFORMS:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        x = np.log1p(x)
                bad = ~np.isfinite(x)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    what = (
                        "log1p of the value is not finite"
                        if f.transform in _LOG1P_TRANSFORMS
                        else "value is not finite"
                    )
                    raise DataError(
                        f"dense {what}", path, column=f.name, row=offset + i, value=col[i].as_py()
                    )
                running[f.name].add(x)
    if running[names[0]].n == 0:
        raise DataError(
            "the train split has no rows (dense statistics need some)",
            schema.root / schema.files["train"],
        )
    return DenseStats(
        {
            f.name: Moments(
                f.transform, running[f.name].mean, running[f.name].std, running[f.name].n
            )
            for f in features
        }
    )


def _as_float64(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Numeric Arrow column -> float64 numpy (nulls become NaN and are caught by the caller)."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
