"""Lightning modules: model + task + optimiser, one shared ``_step`` each."""
