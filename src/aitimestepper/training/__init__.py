"""The two-phase, energy-gated trainer: Part 1 collection, Part 2 replay, epochs, checkpoints."""
