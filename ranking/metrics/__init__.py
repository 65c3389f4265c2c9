"""Evaluation metrics (names follow ``stage/metric[@k][/task]``)."""
