"""The active-learning loop: state, oracles and the runner."""
