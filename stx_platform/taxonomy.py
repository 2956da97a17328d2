"""Cell classes, their order and colours: defined once, imported everywhere.

Label classes follow the paper: PanNuke's classes with Dead replaced by Unknown
(cells whose expression gives no confident class; excluded from the type loss).
PanNuke's own mask channel order differs and is kept separately.
"""

from __future__ import annotations

NEOPLASTIC = "Neoplastic"
EPITHELIAL = "Epithelial"
INFLAMMATORY = "Inflammatory"
CONNECTIVE = "Connective"
DEAD = "Dead"
UNKNOWN = "Unknown"

#: The classes a label table may hold.
LABEL_CLASSES: tuple[str, ...] = (NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE, UNKNOWN)
#: Classes that are scored (Unknown is not a prediction target).
SCORED_CLASSES: tuple[str, ...] = (NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE)

#: PanNuke ``masks.npy`` channels, in file order (Gamper et al. 2019/2020).
PANNUKE_CHANNELS: tuple[str, ...] = (NEOPLASTIC, INFLAMMATORY, CONNECTIVE, DEAD, EPITHELIAL, "Background")
#: CellViT's type-map order for PanNuke: index 0 is background.
PANNUKE_TYPE_ORDER: tuple[str, ...] = ("Background", NEOPLASTIC, INFLAMMATORY, CONNECTIVE, DEAD, EPITHELIAL)

#: Colours as CellViT draws PanNuke classes (RGB), plus grey for Unknown.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    NEOPLASTIC: (255, 0, 0),
    INFLAMMATORY: (34, 221, 77),
    CONNECTIVE: (35, 92, 236),
    DEAD: (254, 255, 0),
    EPITHELIAL: (255, 159, 68),
    UNKNOWN: (160, 160, 160),
}

#: Classes a marker gene can vote for (the coarse classes of marker databases; Neoplastic
#: comes from the cancer-overlap refinement, not from votes).
VOTE_CLASSES: tuple[str, ...] = (EPITHELIAL, INFLAMMATORY, CONNECTIVE, UNKNOWN)
