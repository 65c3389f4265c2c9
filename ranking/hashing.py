"""Stable hashing of raw feature values into embedding rows (numpy only).

Python's ``hash()`` is salted per process, so it can never be part of a
training/serving contract. This module is the contract: integers go through
SplitMix64 (Steele et al., 2014) of ``value XOR seed``; strings are first
reduced to a 64-bit integer with BLAKE2b-64 of their UTF-8 bytes. The row is
``mix % buckets``. The serving bundle ships the seed and bucket count, and the
same functions (numpy only) so a server can reproduce the ids exactly.
"""

from __future__ import annotations

import hashlib

import numpy as np

DEFAULT_SEED = 0x5EED
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wraps modulo 2**64)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z & _M64


def hash_int(values: np.ndarray, buckets: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Map int64 values (any sign, any size) to rows in [0, buckets). Returns int64."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    mixed = splitmix64(v ^ np.uint64(seed))
    return (mixed % np.uint64(buckets)).astype(np.int64)


def string_to_int(values: list[str] | np.ndarray) -> np.ndarray:
    """BLAKE2b-64 of each string's UTF-8 bytes, as int64 (hash only unique values)."""
    arr = np.asarray(values, dtype=object)
    uniq, inverse = np.unique(arr, return_inverse=True)
    codes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
            for s in uniq
        ),
        dtype=np.uint64,
        count=len(uniq),
    )
    return codes[inverse].view(np.int64)


def hash_strings(
    values: list[str] | np.ndarray, buckets: int, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Map strings to rows in [0, buckets)."""
    return hash_int(string_to_int(values), buckets, seed)
