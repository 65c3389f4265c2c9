"""Adapters: public datasets' raw files -> a dataset directory (``ranking-data source=...``).

- :mod:`ranking.data.adapters.movielens` (reading: :mod:`~ranking.data.adapters.movielens_raw`):
  MovieLens-1M and MovieLens-100K,
  split by the published leave-last-out retrieval protocol.
"""
