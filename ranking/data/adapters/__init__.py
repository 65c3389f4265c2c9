"""Adapters: public datasets' raw files -> a dataset directory (``ranking-data source=...``).

- :mod:`ranking.data.adapters.movielens` (reading: :mod:`~ranking.data.adapters.movielens_raw`):
  MovieLens-1M and MovieLens-100K,
  split by the published leave-last-out retrieval protocol;
- :mod:`ranking.data.adapters.ali_ccp`: Ali-CCP in torch-rechub's processed CSV
  layout, for the multi-task ranker (click, purchase), published split kept;
- :mod:`ranking.data.adapters.open_bandit`: the Open Bandit Dataset, both logging
  policies in one log (``policy`` 1 = uniform random), split by day.
"""
