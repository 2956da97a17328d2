"""Ray Tune sweeps over label hyperparameters, each trial scored by training CellViT on its labels."""
