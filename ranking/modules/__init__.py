"""Building blocks shared by the models: embeddings, MLPs, interactions."""
