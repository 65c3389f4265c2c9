"""Adapters: public datasets' raw files -> a dataset directory (``ranking-data source=...``).

- :mod:`ranking.data.adapters.movielens`: MovieLens-1M and MovieLens-100K,
  split by the published leave-last-out retrieval protocol.
"""
