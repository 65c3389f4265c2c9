"""Serving: plain-torch predictors, export bundle, index, recommend CLI.

``ranking.serving.recommend`` imports torch, numpy and faiss only; keep it so.
"""
