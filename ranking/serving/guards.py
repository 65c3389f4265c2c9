"""The checks every serving artifact runs on its inputs before the model sees them.

A serving artifact is ``GuardedPredictor(predictor, inputs)``: it takes the flat
tensor dict the manifest documents, refuses anything else with a message that
names the input, maps every id into its table, then calls the plain-torch
predictor. Imports torch only, scripts with ``torch.jit.script`` and traces with
``torch.export`` (the checks then become the exported program's input guards).

Checks (all formats): every expected name present and no other; dtype; rank;
one batch size B >= 1 shared by all inputs; the width of dense inputs; list
length 1 <= L <= ``max_len``.

Id mapping (so that no id can read outside a table, whatever a client sends):

- hashed features (``ids.map == "hash"``): ``id mod buckets`` (non-negative),
  the same reduction the preprocessing contract applies to the 64-bit hash;
- vocabulary features (``ids.map == "vocab"``): a one-id categorical outside
  ``[0, vocab_size)`` reads the table's out-of-vocabulary row ``vocab_size``
  (all zeros: :class:`~ranking.modules.padded_bags.PaddedEmbeddingBags` appends
  it at export; training tables have no such row);
- lists: a negative id is padding (-1 by convention), as in every serving
  lookup; a vocabulary id ``>= vocab_size`` is dropped (turned into padding), so
  list lookups never need the extra row.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FLOAT = "float32"
INT = "int64"


class GuardedPredictor(nn.Module):
    """Input checks and id mapping in front of a serving predictor.

    Args:
        predictor: module taking ``{name: tensor}`` and returning a tensor.
        inputs: the artifact's input specs as the manifest lists them: ``name``,
            ``dtype`` (``int64``/``float32``), ``shape`` (``["B"]``, ``["B", "L"]``
            or ``["B", D]``), and for id inputs ``ids`` (``{"map": "hash",
            "buckets": H}`` or ``{"map": "vocab", "vocab_size": V}``) and, for
            lists, ``max_len``.

    Shapes: {name: [B] int64 | [B, L] int64 | [B, D] float32} -> predictor's output.

    Example::

        spec = {"name": "brand", "dtype": "int64", "shape": ["B"],
                "ids": {"map": "hash", "buckets": 10}}
        guard = GuardedPredictor(model, [spec])
        guard({"brand": torch.tensor([2**62, -3])})  # model sees ids [4, 7]
        guard({"brand": torch.tensor([1.0])})  # TypeError: input 'brand' must be int64, got float32
    """

    def __init__(self, predictor: nn.Module, inputs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.predictor = predictor
        if not inputs:
            raise ValueError("an artifact needs at least one input")
        is_float: list[bool] = []
        is_list: list[bool] = []
        width: list[int] = []  # dense: D; lists: max_len; categoricals: 0
        hash_buckets: list[int] = []  # > 0: reduce modulo; 0: not hashed
        vocab_size: list[int] = []  # > 0: map out-of-vocabulary ids; 0: no vocabulary
        for s in inputs:
            dtype, shape = s["dtype"], list(s["shape"])
            if dtype not in (FLOAT, INT):
                raise ValueError(f"input {s['name']!r}: unsupported dtype {dtype!r}")
            ids = s.get("ids") or {}
            is_float.append(dtype == FLOAT)
            is_list.append(dtype == INT and len(shape) == 2)
            if dtype == FLOAT:
                width.append(int(shape[1]))
            elif len(shape) == 2:
                width.append(int(s["max_len"]))
            else:
                width.append(0)
            hash_buckets.append(int(ids["buckets"]) if ids.get("map") == "hash" else 0)
            vocab_size.append(int(ids["vocab_size"]) if ids.get("map") == "vocab" else 0)
        # Plain (non-empty) lists, so TorchScript infers List[str]/List[bool]/List[int].
        self.names = [str(s["name"]) for s in inputs]
        self.is_float = is_float
        self.is_list = is_list
        self.width = width
        self.hash_buckets = hash_buckets
        self.vocab_size = vocab_size
        self.expected = ", ".join(self.names)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        for key in inputs:
            if key not in self.names:
                raise ValueError(
                    "unexpected input '" + key + "'; this artifact takes: " + self.expected
                )
        clean: dict[str, torch.Tensor] = {}
        batch = -1
        for i in range(len(self.names)):
            name = self.names[i]
            if name not in inputs:
                raise ValueError(
                    "missing input '" + name + "'; this artifact takes: " + self.expected
                )
            x = inputs[name]
            if self.is_float[i]:
                if x.dtype != torch.float32:
                    raise TypeError(
                        "input '" + name + "' must be float32, got " + _dtype_name(x.dtype)
                    )
            elif x.dtype != torch.int64:
                raise TypeError("input '" + name + "' must be int64, got " + _dtype_name(x.dtype))
            if not torch.jit.is_scripting():
                # A runtime dtype check that survives torch.export (the Python
                # checks above run once, at trace time).
                torch.ops.aten._assert_tensor_metadata.default(x, dtype=x.dtype)
            want_rank = 2 if self.is_float[i] or self.is_list[i] else 1
            if x.dim() != want_rank:
                raise ValueError(
                    "input '"
                    + name
                    + "' must have "
                    + str(want_rank)
                    + " dimensions, got shape "
                    + str(list(x.shape))
                )
            if batch < 0:
                batch = x.shape[0]
                if batch < 1:
                    raise ValueError("input '" + name + "' has an empty batch (B must be >= 1)")
            elif x.shape[0] != batch:
                raise ValueError(
                    "input '"
                    + name
                    + "' has batch size "
                    + str(x.shape[0])
                    + " but '"
                    + self.names[0]
                    + "' has "
                    + str(batch)
                )
            if self.is_float[i]:
                if x.shape[1] != self.width[i]:
                    raise ValueError(
                        "input '"
                        + name
                        + "' must have "
                        + str(self.width[i])
                        + " columns, got "
                        + str(x.shape[1])
                    )
                clean[name] = x
                continue
            if self.is_list[i] and (x.shape[1] < 1 or x.shape[1] > self.width[i]):
                raise ValueError(
                    "input '"
                    + name
                    + "' has list length "
                    + str(x.shape[1])
                    + "; it must lie in [1, "
                    + str(self.width[i])
                    + "] (pad with -1, keep the last max_len ids)"
                )
            clean[name] = self._map_ids(x, i)
        return self.predictor(clean)

    def _map_ids(self, x: torch.Tensor, i: int) -> torch.Tensor:
        buckets = self.hash_buckets[i]
        vocab = self.vocab_size[i]
        if self.is_list[i]:
            if buckets > 0:
                return torch.where(x >= 0, x.remainder(buckets), x)
            if vocab > 0:
                return torch.where(x >= vocab, torch.full_like(x, -1), x)
            return x
        if buckets > 0:
            return x.remainder(buckets)
        if vocab > 0:
            inside = (x >= 0) & (x < vocab)
            return torch.where(inside, x, torch.full_like(x, vocab))
        return x


def _dtype_name(dtype: torch.dtype) -> str:
    # TorchScript prints a dtype as its enum number: name the common ones.
    names = {
        torch.float32: "float32",
        torch.float64: "float64",
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
        torch.int64: "int64",
        torch.int32: "int32",
        torch.int16: "int16",
        torch.int8: "int8",
        torch.uint8: "uint8",
        torch.bool: "bool",
    }
    for known, name in names.items():
        if dtype == known:
            return name
    return str(dtype)
