"""Dataset files -> validated, typed batches."""
