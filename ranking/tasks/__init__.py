"""Tasks own losses (and say which label they learn from); models own no loss."""
