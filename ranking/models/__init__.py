"""Models: tensors in, embeddings or logits out. No losses here (see ranking.tasks).

Each model is a torchrec sparse part (``sparse``: EmbeddingBagCollection) plus
plain-torch heads that take the pooled embeddings as a dict. The serving
export swaps the sparse part for :class:`ranking.modules.padded_bags.PaddedEmbeddingBags`
and reuses the heads unchanged.
"""
