"""Pieces of the training CLI (:mod:`sparsekernels.train`): schedules, metrics, progress bar,
run records, plots and checkpoints. Each submodule is imported where it is used."""
