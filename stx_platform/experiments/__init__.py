"""The paper's experiments as commands: Table 2 (segmentation of held-out organs by a model trained
on ST-derived labels against one trained on PanNuke) and Table 3's model rows (nucleus
classification against the annotation, beside the label methods).

- :mod:`.split`: which slides train and which organs are held out;
- :mod:`.pannuke_dataset`: a PanNuke-format fold written as a built dataset, so both models train
  through the same ingest, trainer and budget;
- :mod:`.heldout`: the held-out slides' patches as evaluation items (truth = nucleus masks and the
  slides' annotation) and the majority type per nucleus;
- :mod:`.run`: the steps (build, train both models, score) and the tables.
"""
