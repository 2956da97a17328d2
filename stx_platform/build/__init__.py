"""Dataset build: per-slide labelling and patching (pure functions here; Ray distributes them)."""
