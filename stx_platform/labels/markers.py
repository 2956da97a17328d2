"""Marker-gene databases mapped onto the label classes: which coarse class each marker gene votes
for, per organ, and which genes count as cancer-associated.

A database is a :class:`MarkerDB`: one row per (gene, cell type, coarse class, organ, source), plus a
cancer gene set and a :class:`MappingReport` saying how the source's cell-type names were mapped.
Sources:

* the curated default embedded in the package (``stx_platform/data/markers/``; see the header of
  ``default_markers.csv`` for how it was curated) - used when no database is configured;
* PanglaoDB (``load_panglaodb``), CellMarker 2.0 (``load_cellmarker``, csv / csv.gz / xlsx) and
  CancerSEA (``load_cancersea``), from files the user downloads (the package ships none of them).

Cell-type names become coarse classes through :data:`CELL_TYPE_RULES`, an ordered list of regular
expressions applied to the normalised name (see :func:`normalise_name`); the first rule that matches
decides. In short:

* Inflammatory: leukocytes - T / NK / NKT / ILC / B / plasma cells, lymphocytes, macrophages,
  monocytes, histiocytes, Kupffer / Hofbauer / Langerhans cells, microglia, dendritic cells (not
  *follicular* dendritic cells), mast cells, granulocytes, myeloid cells, MDSCs, osteoclasts
  (monocyte lineage), committed immune progenitors (pre-B, myeloblast, ...).
* Connective: fibroblasts (incl. cancer-associated), stromal / mesenchymal / interstitial cells,
  follicular dendritic and fibroblastic reticular cells, endothelial cells (blood and lymphatic),
  pericytes / mural cells, mesangial and juxtaglomerular cells, smooth / skeletal / cardiac muscle,
  myofibroblasts, adipocytes, chondrocytes, osteoblasts / osteocytes, tendon / synovial cells,
  stellate cells, decidual cells and the ovarian sex-cord-stromal cells (granulosa, theca, luteal).
* Epithelial: epithelial / epidermal cells, keratinocytes, luminal / basal / myoepithelial cells,
  ductal / acinar cells, hepatocytes, cholangiocytes, pneumocytes, alveolar type I/II, club,
  ciliated, goblet, secretory, tuft, Paneth, enterocytes / colonocytes, (entero)endocrine and
  neuroendocrine cells of epithelia, islet alpha / beta / delta / PP / epsilon cells, nephron
  epithelia (podocytes, tubules, loop of Henle, collecting duct, principal / intercalated cells),
  urothelium, gastric foveolar / pit / mucous neck / parietal / chief cells, thyrocytes,
  Merkel cells, sebocytes, adenohypophysis and adrenal-cortex cells, and **mesothelial cells**:
  mesothelium is a simple (keratin-positive) epithelium by histology, so it votes Epithelial.
* Unknown (they vote, for the Unknown class): cell types that are none of PanNuke's classes -
  neurons, glia (astrocytes, oligodendrocytes, Schwann / ependymal / Mueller cells), retina,
  olfactory epithelium, melanocytes, chromaffin cells, germ cells (oocytes, sperm lineage),
  Sertoli / Leydig cells, embryonic / fetal-developmental cells (epiblast, trophoblast, germ
  layers, nephron progenitors, ...), erythroid cells, megakaryocytes, platelets, haematopoietic
  stem / multipotent progenitors, and stem / progenitor cells whose name gives no lineage.
* dropped (no vote): everything else - cell states without a lineage (``Proliferative cell``),
  marker-only names (``SLC16A7+ cell``), study labels (``Lake et al.Science.Ex8``), ambiguous
  hybrids (``Epithelial-mesenchymal cell``) and haematological malignant cells (leukaemic,
  lymphoma, myeloma cells: neither votes nor cancer genes). The report lists them with row counts.

Malignant cells (``Cancer cell``, ``Cancer stem cell``, ``Malignant cell``, ``Tumor cell``,
``Circulating tumor cell``, ``... carcinoma cell``, ``Glioma stem cell``, ...; :func:`is_malignant_cell_type`)
do not vote: their markers go to the cancer gene set. Cells *in* tumours - ``Cancer-associated
fibroblast``, ``Tumor-associated macrophage``, ``Tumor-infiltrating T cell``, ``Tumor endothelial
cell`` - vote for their lineage's class.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stx_platform import storage
from stx_platform.organs import ORGANS, canonical_organ
from stx_platform.taxonomy import (
    CONNECTIVE,
    EPITHELIAL,
    INFLAMMATORY,
    NEOPLASTIC,
    UNKNOWN,
    VOTE_CLASSES,
)

# VOTE_CLASSES (taxonomy) is the column order of MarkerDB.votes.
#: Classes of :meth:`MarkerDB.signatures`, in order.
SIGNATURE_CLASSES: tuple[str, ...] = (NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE)
#: Columns of :attr:`MarkerDB.table`.
TABLE_COLUMNS: tuple[str, ...] = ("gene", "cell_type", "coarse", "organ", "source")

SOURCE_PANGLAODB = "PanglaoDB"
SOURCE_CELLMARKER = "CellMarker2"
SOURCE_DEFAULT = "stx-default"

# --------------------------------------------------------------------------------------------------
# cell-type names -> coarse classes
# --------------------------------------------------------------------------------------------------

_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "κ": "kappa", "λ": "lambda"}


def normalise_name(name: object) -> str:
    """Lower-case ASCII words separated by single spaces; ``+`` kept, Greek letters spelled out.

    ``"Gamma delta(γδ) T cell"`` -> ``"gamma delta gamma delta t cell"``,
    ``"Tumor‐associated macrophage (TAM)"`` -> ``"tumor associated macrophage tam"``.
    """
    s = unicodedata.normalize("NFKC", "" if name is None else str(name))
    s = "".join(f" {_GREEK[ch]} " if ch in _GREEK else ch for ch in s)
    # punctuation (all dashes, brackets, slashes, underscores), separators and symbols -> space; '+' stays
    s = "".join(ch if ch == "+" or not unicodedata.category(ch).startswith(("P", "Z", "S")) else " " for ch in s)
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii").lower()  # ü -> u
    s = re.sub(r"[^a-z0-9+]+", " ", s)
    return " ".join(s.split())


def _words(*alternatives: str) -> str:
    """A regex matching any alternative as whole word(s), with an optional plural ``s``/``es``."""
    return r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?:s|es)?(?![a-z0-9])"


_STEM_RULE = "stem/progenitor without lineage"

#: The ordered name -> class rules: ``(class or None, regex on normalise_name(name), what it covers)``.
#: The first matching rule decides; ``None`` drops the name explicitly. Names no rule matches are
#: dropped too. Order matters where names share words: microglia before glia, follicular dendritic
#: cells before dendritic cells, neuroendocrine before neuro-, immune lineages before epithelial
#: words ("Inflammatory dendritic epidermal cell", "Alveolar macrophage"), connective before
#: epithelial ("Hepatic stellate cell", "Airway smooth muscle", "Portal vein ..."), the generic
#: stem/progenitor rule last (so "Mesenchymal stem cell" is Connective, "Intestinal stem cell"
#: Epithelial, "LGR5+ stem cell" Unknown).
CELL_TYPE_RULES: tuple[tuple[str | None, str, str], ...] = (
    # --- explicit drops: hybrids and names whose words would mislead a later rule
    (None, _words(r"epithelial mesenchymal", r"mesenchymal epithelial", r"non neuron"), "hybrid / negated names"),
    # --- names with an immune or stromal word that a later Unknown/Epithelial rule would catch
    (INFLAMMATORY, _words(r"microglia[a-z]*"), "microglia (brain-resident macrophages)"),
    (CONNECTIVE, _words(r"follicular dendritic", r"fibroblastic reticular", r"purkinje fiber",
                        r"his bundle", r"peritubular myoid"), "stromal cells with immune/neural-sounding names"),
    (EPITHELIAL, _words(r"neuroendocrine", r"enteroendocrine", r"enterochromaffin", r"parafollicular",
                        r"merkel"), "endocrine cells of epithelia"),
    # --- Unknown: cell types that are none of PanNuke's classes
    (UNKNOWN, _words(r"glia[a-z]*", r"schwann", r"astrocyt[a-z]*", r"astroglia[a-z]*", r"oligodendro[a-z]*",
                     r"ependym[a-z]*", r"tanycyte", r"muller", r"bergmann", r"neuron[a-z]*", r"interneuron[a-z]*",
                     r"neura[a-z]*", r"neuro[a-z]*", r"photoreceptor", r"retina[a-z]*", r"ganglion",
                     r"bipolar", r"amacrine", r"rod", r"cone", r"horizontal cell", r"panneuron", r"nerve",
                     r"macroglia[a-z]*", r"pituicyte", r"cajal retzius", r"pyramidal", r"granule",
                     r"purkinje", r"pinealocyte", r"medium spiny", r"sensory", r"olfactory", r"chromaffin",
                     r"adrenal medulla", r"sympatho[a-z]*", r"choroid plexus", r"melanocyte", r"melanoblast"),
     "nervous system, eye, olfactory epithelium, neural crest, melanocytes"),
    (UNKNOWN, _words(r"germ", r"oocyte", r"oogoni[a-z]*", r"oogenesis", r"sperm[a-z]*", r"gonocyte",
                     r"prospermatogoni[a-z]*", r"sertoli", r"[a-z]*leydig", r"testis somatic"),
     "germ cells, Sertoli and Leydig cells"),
    (UNKNOWN, _words(r"embryo[a-z]*", r"epiblast[a-z]*", r"hypoblast[a-z]*", r"blastomere", r"morula", r"zygote",
                     r"trophectoderm", r"[a-z]*trophoblast", r"endoderm[a-z]*", r"mesoderm[a-z]*",
                     r"ectoderm[a-z]*", r"pluripotent", r"ipsc", r"inner cell", r"amnion[a-z]*", r"yolk sac",
                     r"placode", r"somite", r"presomitic", r"primitive streak", r"hemangioblast",
                     r"pre ?tubular", r"renal vesicle", r"comma shaped", r"ureteric bud", r"nephron progenitor",
                     r"kidney progenitor", r"renal progenitor", r"cap mesenchym[a-z]*", r"developing nephron",
                     r"primitive vesicle", r"septum transversum[a-z]*", r"pharyngeal arch", r"foregut",
                     r"midgut", r"hindgut", r"liver bud", r"bud tip"), "embryonic and developmental cells"),
    (UNKNOWN, _words(r"(?:pro)?eryth[a-z]*", r"reticulocyte", r"red blood", r"normoblast", r"megakaryo[a-z]*",
                     r"p(?:l)?atelet", r"h?a?ematopoie[a-z]*", r"multipotent progenitor", r"multilymphoid progenitor",
                     r"lymphoid primed", r"lmpp", r"common (?:myeloid|lymphoid) progenitor", r"cmp",
                     r"thymus seeding progenitor", r"(?:myeloid|lymphoid) stem"),
     "erythroid cells, megakaryocytes, platelets, haematopoietic stem/multipotent progenitors"),
    # --- Inflammatory: leukocytes
    (INFLAMMATORY, r"(?<![a-z0-9])(?<!type )t(?![a-z0-9])|" + _words(
        r"t[0-9]+", r"thymocyte", r"treg", r"tfh", r"th[0-9]+", r"tc [0-9]+", r"tem", r"tcm", r"temra", r"tscm",
        r"trm", r"mait", r"nkt", r"(?:lr)?nk", r"killer", r"cytotoxic", r"cd[48]\+?", r"lymphocyte",
        r"innate lymphoid", r"ilc[0-9]*", r"nuocyte", r"slec",
        r"thymic emigrant"), "T, NK, NKT, ILC, lymphocytes"),
    (INFLAMMATORY, r"(?<![a-z0-9])(?<!type )b(?![a-z0-9])|" + _words(
        r"b[0-9]+", r"breg", r"plasma", r"plasmablast", r"plasmacyte", r"antibody secreting", r"germinal cent(?:er|re)",
        r"light zone", r"dark zone", r"cd19\+?"), "B and plasma cells"),
    (INFLAMMATORY, _words(r"macrophage", r"monocyte", r"histiocyte", r"kupffer", r"hofbauer", r"langerhans",
                          r"langerin", r"den[dt]ritic", r"mast", r"neutrophil", r"eosinophil", r"basophil",
                          r"granulocyte", r"polymorphonuclear", r"myeloid", r"myeloblast", r"mdsc", r"leukocyte",
                          r"white blood", r"immune", r"mononuclear", r"phagocyte", r"antigen presenting",
                          r"osteoclast", r"lymphoid", r"meyloid", r"myelo monocytic", r"granulocytic",
                          r"inflammatory cell", r"foam"),
     "myeloid cells, leukocytes, osteoclasts"),
    # --- Connective: stroma, vessels, muscle, fat, cartilage, bone
    (CONNECTIVE, _words(r"endotheli[a-z]*", r"endocardi[a-z]*", r"capillary", r"aerocyte", r"arter[a-z]*", r"vein",
                        r"venous", r"venule", r"[a-z]*vascular", r"vasculature", r"vessel", r"sinusoid[a-z]*",
                        r"lymphatic", r"pericyte", r"mural", r"mesangial", r"juxtaglomerular"),
     "endothelium (blood, lymphatic), pericytes, mesangial cells"),
    (CONNECTIVE, _words(r"smooth muscle", r"vsmc", r"muscle", r"[a-z]*myocyte", r"myoblast", r"myotube",
                        r"myogenic", r"myoid", r"myofibroblast[a-z]*", r"myometri[a-z]*", r"rhabdomyo[a-z]*",
                        r"leiomyo[a-z]*", r"satellite", r"muscularis"), "smooth, skeletal and cardiac muscle"),
    (CONNECTIVE, _words(r"[a-z]*fibroblast[a-z]*", r"fibrocyte", r"fibro adipogenic", r"stroma[a-z]*",
                        r"mesenchym[a-z]*", r"stellate", r"[a-z]*adipo[a-z]*", r"fat", r"lipoblast",
                        r"[a-z]*chondro[a-z]*", r"cartilage", r"osteo[a-z]*", r"teno[a-z]*", r"tendon",
                        r"ligament", r"synovi[a-z]*", r"nucleus pulposus", r"interstitial", r"dermal",
                        r"adventitial", r"decidua[a-z]*", r"(?:lepto)?meningeal", r"granulosa", r"theca",
                        r"lute[a-z]*", r"spindle"),
     "fibroblasts, stroma, fat, cartilage, bone, decidua, ovarian sex-cord stroma"),
    # --- Epithelial
    (EPITHELIAL, _words(r"myoepitheli[a-z]*", r"mesotheli[a-z]*", r"epicardi[a-z]*", r"epitheli[a-z]*",
                        r"epiderm[a-z]*", r"keratinocyte", r"squamous", r"spinous", r"basal", r"suprabasal",
                        r"luminal", r"ductal", r"duct", r"acinar", r"acinus", r"hepatocyte", r"hepatic",
                        r"hepatoblast", r"cholangiocyte", r"biliary", r"bile duct", r"oval cell", r"gallbladder",
                        r"pneumocyte", r"alveolar", r"club", r"clara", r"ciliated", r"multiciliated",
                        r"deuterosomal", r"goblet", r"secretory", r"enterocyte", r"colonocyte", r"paneth",
                        r"tuft", r"brush", r"microfold", r"crypt", r"intestin[a-z]*", r"colonic", r"colorectal",
                        r"colon(?:o)?cyte", r"gastric",
                        r"esophageal", r"duodenal", r"endocrine", r"islet",
                        r"(?:alpha|beta|delta|epsilon|gamma)(?: like| pp)? cell", r"pp cell", r"pancrea[a-z]*",
                        r"podocyte", r"tubul[a-z]*",
                        r"loop of henle", r"thick ascending", r"thin limb", r"collecting duct", r"principal",
                        r"intercalated", r"nephron", r"urotheli[a-z]*", r"urethelial", r"umbrella",
                        r"p[ae]rietal", r"chief", r"foveolar", r"pit", r"pit mucous", r"mucous", r"mucosal",
                        r"neck cell", r"isthmus", r"pyloric", r"fundic", r"oxyntic", r"zymogenic", r"thyrocyte",
                        r"thyroid", r"follicular", r"[il]onocyte", r"hillock", r"sebocyte", r"sebaceous", r"sweat",
                        r"trichocyte", r"hair follicle", r"mammary", r"lactocyte", r"oxyphil", r"salivary",
                        r"serous", r"glandular", r"gland", r"pituitary", r"corticotroph[a-z]*",
                        r"somatotroph?e?", r"thyrotroph?e?", r"lactotroph?e?", r"gonadotroph?e?", r"zona",
                        r"prostat[a-z]*", r"barrett"),
     "epithelia of the organs, mesothelium"),
    # --- last: stem / progenitor cells whose name gives no lineage
    (UNKNOWN, _words(r"stem", r"progenitor", r"precursor", r"multipotent", r"totipotent"), _STEM_RULE),
)

_COMPILED_RULES = tuple((cls, re.compile(rx), what) for cls, rx, what in CELL_TYPE_RULES)

_MALIGNANT_WORD = re.compile(_words(r"cancer", r"tumou?r", r"malignant", r"carcinoma", r"adenocarcinoma",
                                    r"glioblastoma", r"glioma", r"melanoma", r"mesothelioma", r"[a-z]*sarcoma",
                                    r"neoplastic", r"paget", r"ctc", r"cscc", r"csc", r"carcinomatosis"))
#: malignant words that name a tumour entity: the cell is malignant whatever lineage words follow
_STRONG_MALIGNANT = re.compile(_words(r"malignant", r"carcinoma", r"adenocarcinoma", r"glioblastoma", r"glioma",
                                      r"melanoma", r"mesothelioma", r"[a-z]*sarcoma", r"neoplastic", r"paget"))
_NOT_MALIGNANT = re.compile(_words(r"non (?:malignant|cancer|tumou?r)", r"anti tumou?r", r"pro tumou?r",
                                   r"associated", r"infiltrating", r"infiltrated", r"reactive", r"specific",
                                   r"tumou?r antigen", r"educated"))
_HAEM_MALIGNANT = re.compile(_words(r"leuka?emi[a-z]*", r"lymphoma", r"myeloma", r"lymphoblastic",
                                    r"myelodysplastic", r"malignant plasma", r"mcl", r"sezary",
                                    r"hodgkin", r"reed sternberg"))


def _rule_for(name: object) -> tuple[str | None, str]:
    """``(class or None, rule description)`` of the first matching rule; ``(None, "")`` when none."""
    n = normalise_name(name)
    for cls, rx, what in _COMPILED_RULES:
        if rx.search(n):
            return cls, what
    return None, ""


@functools.lru_cache(maxsize=8192)
def _kind(name: str) -> tuple[str, str | None, str]:
    """``("malignant" | "haem" | "class" | "dropped", class, rule)`` for one raw cell-type name."""
    n = normalise_name(name)
    if _MALIGNANT_WORD.search(n) or _HAEM_MALIGNANT.search(n):
        if _HAEM_MALIGNANT.search(n):
            return "haem", None, "haematological malignant cell"
        if not _NOT_MALIGNANT.search(n):
            if _STRONG_MALIGNANT.search(n):
                return "malignant", None, "malignant cell"
            rest = _MALIGNANT_WORD.sub(" ", n)
            cls, _ = _rule_for(rest)
            if cls not in (INFLAMMATORY, CONNECTIVE):  # "Tumor endothelial cell" is an endothelial cell
                return "malignant", None, "malignant cell"
    cls, what = _rule_for(n)
    return ("class" if cls else "dropped"), cls, what


def classify_cell_type(name: object) -> str | None:
    """The coarse class (one of :data:`VOTE_CLASSES`) a cell-type name votes for, or None when the
    name is dropped - including malignant cells, whose markers go to the cancer set instead
    (:func:`is_malignant_cell_type`) and haematological malignant cells (neither)."""
    return _kind(str(name))[1]


def is_malignant_cell_type(name: object) -> bool:
    """True for a malignant (solid-tumour) cell: ``Cancer cell``, ``Cancer stem cell``, ``Malignant
    cell``, ``Tumor cell``, ``Circulating tumor cell``, ``... carcinoma cell``, ``Glioma stem cell``...;
    False for cells in tumours (``Cancer-associated fibroblast``, ``Tumor-infiltrating T cell``,
    ``Tumor endothelial cell``) and for haematological malignancies (leukaemia, lymphoma, myeloma)."""
    return _kind(str(name))[0] == "malignant"


# --------------------------------------------------------------------------------------------------
# mapping report
# --------------------------------------------------------------------------------------------------


@dataclass
class SourceReport:
    """How one source's rows and cell-type names were used."""

    source: str
    file: str = ""
    rows_read: int = 0                                          # rows in the file (after the species filter)
    rows_voting: int = 0                                        # rows that became votes (before deduplication)
    rows_by_class: dict[str, int] = field(default_factory=dict)
    names_by_class: dict[str, int] = field(default_factory=dict)  # distinct cell-type names mapped per class
    dropped: dict[str, int] = field(default_factory=dict)       # cell-type name -> rows not used
    malignant: dict[str, int] = field(default_factory=dict)     # cell-type name -> rows sent to the cancer set
    cancer_genes: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "file": self.file, "rows_read": self.rows_read,
                "rows_voting": self.rows_voting, "rows_by_class": dict(self.rows_by_class),
                "names_by_class": dict(self.names_by_class), "dropped": dict(self.dropped),
                "malignant": dict(self.malignant), "cancer_genes": self.cancer_genes, "notes": list(self.notes)}


@dataclass
class MappingReport:
    """Per source: names mapped per class and the dropped names with their row counts; plus notes
    (fallbacks taken when the database was assembled)."""

    sources: list[SourceReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def merged(self, *others: MappingReport) -> MappingReport:
        out = MappingReport(list(self.sources), list(self.notes))
        for o in others:
            out.sources.extend(o.sources)
            out.notes.extend(n for n in o.notes if n not in out.notes)
        return out

    def source(self, name: str) -> SourceReport:
        for s in self.sources:
            if s.source == name:
                return s
        raise KeyError(f"no source {name!r} in the report (have {[s.source for s in self.sources]})")

    @property
    def dropped(self) -> dict[str, int]:
        """Dropped names of all sources, with their row counts (summed where names repeat)."""
        out: dict[str, int] = {}
        for s in self.sources:
            for k, v in s.dropped.items():
                out[k] = out.get(k, 0) + v
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def as_dict(self) -> dict[str, Any]:
        return {"sources": [s.as_dict() for s in self.sources], "notes": list(self.notes)}

    def to_markdown(self, max_dropped: int | None = 50) -> str:
        lines = ["# Marker database mapping", ""]
        for n in self.notes:
            lines.append(f"- {n}")
        if self.notes:
            lines.append("")
        for s in self.sources:
            lines += [f"## {s.source}" + (f" ({s.file})" if s.file else ""), "",
                      f"rows read: {s.rows_read}; rows voting: {s.rows_voting}; cancer genes: {s.cancer_genes}", ""]
            if s.rows_voting or s.dropped or s.malignant:
                lines += ["| class | cell-type names | rows |", "| --- | ---: | ---: |"]
                for c in VOTE_CLASSES:
                    lines.append(f"| {c} | {s.names_by_class.get(c, 0)} | {s.rows_by_class.get(c, 0)} |")
                lines.append(f"| malignant (cancer set) | {len(s.malignant)} | {sum(s.malignant.values())} |")
                lines.append(f"| dropped | {len(s.dropped)} | {sum(s.dropped.values())} |")
                lines.append("")
            for n in s.notes:
                lines.append(f"- {n}")
            if s.notes:
                lines.append("")
            if s.malignant:
                lines.append("Malignant cell types (markers -> cancer set): "
                             + ", ".join(f"{k} ({v})" for k, v in s.malignant.items()))
                lines.append("")
            if s.dropped:
                items = sorted(s.dropped.items(), key=lambda kv: (-kv[1], kv[0]))
                shown = items if max_dropped is None else items[:max_dropped]
                lines.append("Dropped cell-type names (rows): " + ", ".join(f"{k} ({v})" for k, v in shown)
                             + (f", ... and {len(items) - len(shown)} more" if len(shown) < len(items) else ""))
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def _source_report(source: str, table: pd.DataFrame, file: str = "", rows_read: int | None = None) -> SourceReport:
    """Per-class counts of a finished vote table (for sources that hold only mapped rows)."""
    return SourceReport(
        source=source, file=file, rows_read=len(table) if rows_read is None else rows_read, rows_voting=len(table),
        rows_by_class={c: int((table["coarse"] == c).sum()) for c in VOTE_CLASSES},
        names_by_class={c: int(table.loc[table["coarse"] == c, "cell_type"].nunique()) for c in VOTE_CLASSES})


# --------------------------------------------------------------------------------------------------
# the database
# --------------------------------------------------------------------------------------------------


def _organ_key(organ: str | None) -> str | None:
    if organ is None or organ == "":
        return None
    key = canonical_organ(organ)
    if key is None:
        raise ValueError(f"unknown organ {organ!r}; expected one of {list(ORGANS)} (or None for organ-agnostic)")
    return key


def _clean_genes(values: Iterable[object]) -> list[str]:
    return [str(g).strip().upper() for g in values]


@dataclass(frozen=True, eq=False)
class MarkerDB:
    """Marker genes -> coarse classes, per organ, and a cancer gene set.

    ``table`` columns: ``gene`` (upper-case symbol), ``cell_type``, ``coarse`` (one of
    :data:`VOTE_CLASSES`), ``organ`` (an organ key, or ``""`` for entries of no organ: immune
    system, vasculature, connective tissue, blood ...), ``source``. Constructing one normalises the
    table (upper-cases genes, canonicalises organs, adds ``source="custom"`` when absent), checks it
    and drops duplicate rows. Instances compare by identity; treat them as immutable.
    """

    table: pd.DataFrame
    cancer_genes: frozenset[str] = frozenset()
    report: MappingReport = field(default_factory=MappingReport)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        t = self.table
        if not isinstance(t, pd.DataFrame):
            raise TypeError(f"MarkerDB.table must be a DataFrame, not {type(t).__name__}")
        missing = [c for c in ("gene", "cell_type", "coarse") if c not in t.columns]
        if missing:
            raise ValueError(f"marker table: missing column(s) {missing}; expected {list(TABLE_COLUMNS)}")
        t = t.copy()
        if "organ" not in t.columns:
            t["organ"] = ""
        if "source" not in t.columns:
            t["source"] = "custom"
        t = t.loc[:, list(TABLE_COLUMNS)]
        t["gene"] = _clean_genes(t["gene"].fillna(""))
        t["cell_type"] = t["cell_type"].fillna("").astype(str).str.strip()
        t["coarse"] = t["coarse"].fillna("").astype(str).str.strip()
        t["source"] = t["source"].fillna("").astype(str)
        organs = t["organ"].fillna("").astype(str).str.strip()
        mapped = {o: ("" if o == "" else (canonical_organ(o) or f"?{o}")) for o in organs.unique()}
        t["organ"] = organs.map(mapped)
        bad_organs = sorted(o[1:] for o in set(mapped.values()) if o.startswith("?"))
        if bad_organs:
            raise ValueError(f"marker table: unknown organ(s) {bad_organs}; expected {list(ORGANS)} or ''")
        bad = sorted(set(t["coarse"]) - set(VOTE_CLASSES))
        if bad:
            raise ValueError(f"marker table: unknown class(es) {bad}; expected one of {list(VOTE_CLASSES)}")
        t = t[(t["gene"] != "") & (t["gene"] != "NAN") & (t["cell_type"] != "")]
        t = t.drop_duplicates().sort_values(list(TABLE_COLUMNS), kind="stable").reset_index(drop=True)
        object.__setattr__(self, "table", t)
        object.__setattr__(self, "cancer_genes", frozenset(g for g in _clean_genes(self.cancer_genes) if g))

    # ---------------------------------------------------------------- votes
    def _vote_matrix(self, organ: str | None, shared: bool = False) -> tuple[dict[str, int], np.ndarray]:
        key = (organ, shared and organ is not None)
        hit = self._cache.get(key)
        if hit is None:
            t = self.table
            if organ is not None:
                own = t["organ"] == organ
                if shared:  # the lineages every organ has; not neurons, germ or embryonic cells
                    own |= (t["organ"] == "") & (t["coarse"] != UNKNOWN)
                t = t[own]
            d = t[["gene", "cell_type", "coarse"]].drop_duplicates()
            counts = d.groupby(["gene", "coarse"]).size().unstack(fill_value=0)
            counts = counts.reindex(columns=list(VOTE_CLASSES), fill_value=0)
            shares = counts.to_numpy(np.float64)
            if len(shares):
                shares = shares / shares.sum(axis=1, keepdims=True)
            mat = np.vstack([shares.reshape(-1, len(VOTE_CLASSES)), np.zeros((1, len(VOTE_CLASSES)))])
            mat.setflags(write=False)
            hit = ({g: i for i, g in enumerate(counts.index)}, mat)
            self._cache[key] = hit
        return hit

    def votes(self, genes: Sequence[str], organ: str | None = None, shared: bool = False) -> np.ndarray:
        """``(len(genes), 4)`` float64 over :data:`VOTE_CLASSES`: for each gene, the share of the
        distinct cell types it marks that belong to each class.

        A gene listed for 3 epithelial and 1 inflammatory cell type gets ``[0.75, 0.25, 0, 0]``;
        cell types are counted once however many rows (organs, sources) repeat them, so the rows
        sum to 1 for a gene with entries and are 0 for a gene without. ``organ=None`` uses the
        whole database; an organ key (or alias) uses only that organ's entries, or with ``shared``
        that organ's and the organ-agnostic ones of the scored lineages (``organ == ""`` and not
        Unknown: the immune cells, vessels, stroma that every organ has, not the neurons or germ
        cells that PanglaoDB files under no organ). Case-insensitive.
        """
        index, mat = self._vote_matrix(_organ_key(organ), shared)
        zero = len(mat) - 1
        rows = [index.get(str(g).strip().upper(), zero) for g in genes]
        return mat[rows] if rows else np.zeros((0, len(VOTE_CLASSES)))

    def signatures(self, genes: Sequence[str], organ: str | None = None, min_share: float = 0.5
                   ) -> dict[str, list[str]]:
        """Per class in :data:`SIGNATURE_CLASSES`, the given genes that mark it: for Neoplastic the
        genes in the cancer set; for the others the genes whose vote share for the class is at least
        ``min_share`` (organ-specific votes where the gene has entries for the organ, else the
        organ-agnostic votes). Genes keep their given spelling and order; repeats are dropped."""
        uniq = list(dict.fromkeys(str(g) for g in genes))
        v = self.votes(uniq, None)
        if _organ_key(organ) is not None and uniq:
            vo = self.votes(uniq, organ)
            has = vo.sum(axis=1) > 0
            v = np.where(has[:, None], vo, v)
        out: dict[str, list[str]] = {NEOPLASTIC: [g for g in uniq if g.strip().upper() in self.cancer_genes]}
        for c in SIGNATURE_CLASSES[1:]:
            j = VOTE_CLASSES.index(c)
            out[c] = [g for g, s in zip(uniq, v[:, j]) if s > 0 and s >= min_share]
        return out

    def cancer_genes_beyond_lineage(self, organ: str | None) -> frozenset[str]:
        """The cancer genes that do not mark the organ's normal epithelium: those whose votes (the
        organ's entries and the organ-agnostic ones; the whole database for no organ) are not at
        least half Epithelial. Against all cells of a slide, ESR1 or KRT5 up in a cluster say
        "breast epithelium", not "cancer", however many cancer gene sets list them."""
        key = ("beyond", _organ_key(organ))
        hit = self._cache.get(key)
        if hit is None:
            genes = sorted(self.cancer_genes)
            v = self.votes(genes, organ, shared=True) if genes else np.zeros((0, len(VOTE_CLASSES)))
            epi = v[:, VOTE_CLASSES.index(EPITHELIAL)] if len(genes) else np.zeros(0)
            hit = frozenset(g for g, e in zip(genes, epi) if e < 0.5)
            self._cache[key] = hit
        return hit

    def cancer_genes_of_epithelium(self) -> frozenset[str]:
        """The cancer genes that are not markers of another lineage (more than half of their
        whole-database votes Inflammatory or Connective). CD45/PTPRC, CD31/PECAM1 and CD20/MS4A1
        reach CellMarker's cancer rows as negative-selection markers, collagens and POSTN as
        stromal programmes; up in an epithelial cluster they are spill-over or doublets, not
        tumour."""
        hit = self._cache.get("cancer-epithelium")
        if hit is None:
            genes = sorted(self.cancer_genes)
            v = self.votes(genes, None) if genes else np.zeros((0, len(VOTE_CLASSES)))
            other = v[:, [VOTE_CLASSES.index(INFLAMMATORY), VOTE_CLASSES.index(CONNECTIVE)]].sum(1)
            hit = frozenset(g for g, o in zip(genes, other) if o <= 0.5)
            self._cache["cancer-epithelium"] = hit
        return hit

    def tumour_genes(self, organ: str | None, exclude: frozenset[str] = frozenset()) -> frozenset[str]:
        """The cancer genes only a tumour explains in an epithelial cluster of this organ: beyond
        its normal epithelium (:meth:`cancer_genes_beyond_lineage`), no marker of another lineage
        (:meth:`cancer_genes_of_epithelium`), less ``exclude`` (e.g. cell-state genes)."""
        return (self.cancer_genes_beyond_lineage(organ) & self.cancer_genes_of_epithelium()) - exclude

    def cancer_overlap(self, genes: Sequence[str]) -> float:
        """Fraction of the given genes (as given, repeats included) that are in the cancer set; 0 for none."""
        genes = list(genes)
        if not genes:
            return 0.0
        return sum(str(g).strip().upper() in self.cancer_genes for g in genes) / len(genes)

    # ---------------------------------------------------------------- identity, combination
    def content_hash(self) -> str:
        """First 16 hex digits of a sha256 over the sorted rows and the sorted cancer genes
        (computed once: the database is immutable, and every label set id needs it)."""
        cached = self.__dict__.get("_content_hash")
        if cached is None:
            h = hashlib.sha256()
            rows = sorted("\t".join(r) for r in self.table[list(TABLE_COLUMNS)].itertuples(index=False, name=None))
            h.update("\n".join(rows).encode("utf-8"))
            h.update(b"\n#cancer\n")
            h.update("\n".join(sorted(self.cancer_genes)).encode("utf-8"))
            cached = h.hexdigest()[:16]
            object.__setattr__(self, "_content_hash", cached)   # frozen dataclass
        return cached

    @property
    def genes(self) -> frozenset[str]:
        """Every gene with a vote entry."""
        return frozenset(self.table["gene"])

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (f"MarkerDB({len(self.table)} rows, {self.table['gene'].nunique()} genes, "
                f"sources={sorted(set(self.table['source']))}, {len(self.cancer_genes)} cancer genes)")

    def __add__(self, other: MarkerDB) -> MarkerDB:
        if not isinstance(other, MarkerDB):
            return NotImplemented
        return MarkerDB.combine(self, other)

    @staticmethod
    def combine(*dbs: MarkerDB) -> MarkerDB:
        """Union of the tables and of the cancer sets; the reports are concatenated."""
        if not dbs:
            raise ValueError("combine() needs at least one MarkerDB")
        table = pd.concat([d.table for d in dbs], ignore_index=True)
        cancer = frozenset().union(*(d.cancer_genes for d in dbs))
        return MarkerDB(table, cancer, dbs[0].report.merged(*(d.report for d in dbs[1:])))


# --------------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------------


def _read_raw(url: str, what: str) -> bytes:
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ValueError(f"{what} file {url}: not found") from None
    except (IsADirectoryError, PermissionError, OSError) as e:
        raise ValueError(f"{what} file {url}: cannot be read ({type(e).__name__}: {e})") from None
    if data[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{what} file {url}: corrupt gzip data ({e})") from None
    return data


def _read_table(url: str, what: str, sep: str | None = None) -> pd.DataFrame:
    """A csv / tsv / xlsx table (gzip transparent) as strings, every missing value as ''."""
    data = _read_raw(url, what)
    try:
        if data[:4] == b"PK\x03\x04":  # xlsx (a zip)
            df = pd.read_excel(io.BytesIO(data), sheet_name=0, dtype=str, engine="openpyxl")
        else:
            if sep is None:
                head = data[:4096].decode("utf-8", "replace").lstrip("\ufeff").splitlines()
                first = next((ln for ln in head if ln.strip()), "")
                sep = "\t" if "\t" in first else ","
            df = pd.read_csv(io.BytesIO(data), sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             encoding="utf-8-sig", on_bad_lines="error")
    except Exception as e:
        raise ValueError(f"{what} file {url}: not a readable table ({type(e).__name__}: {e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.fillna("")


def _columns(df: pd.DataFrame, url: str, what: str, required: Sequence[str]) -> dict[str, str]:
    """Map each required column name to the file's column (matched case-insensitively)."""
    by_lower = {c.lower(): c for c in df.columns}
    missing = [c for c in required if c.lower() not in by_lower]
    if missing:
        raise ValueError(f"{what} file {url}: missing column(s) {missing} (found {list(df.columns)[:20]})")
    return {c: by_lower[c.lower()] for c in required}


def _finish_report(rep: SourceReport, names: pd.Series, classes: pd.Series) -> None:
    rep.rows_voting = int(classes.isin(VOTE_CLASSES).sum())
    rep.rows_by_class = {c: int((classes == c).sum()) for c in VOTE_CLASSES}
    rep.names_by_class = {c: int(names[classes == c].nunique()) for c in VOTE_CLASSES}


def _counts(names: pd.Series) -> dict[str, int]:
    vc = names.value_counts()
    return {str(k): int(v) for k, v in sorted(vc.items(), key=lambda kv: (-kv[1], str(kv[0])))}


# PanglaoDB's organ column is coarse: "GI tract" holds stomach cell types, "Reproductive" mixes organs.
_PANGLAO_ORGAN_BY_CELL_TYPE = {
    "foveolar cells": "stomach", "gastric chief cells": "stomach", "parietal cells": "stomach",
    "granulosa cells": "ovary", "luteal cells": "ovary", "decidual cells": "uterus",
}


def load_panglaodb(url: str, species: str = "Hs") -> MarkerDB:
    """PanglaoDB's marker TSV (e.g. ``PanglaoDB_markers_27_Mar_2020.tsv``; gzip transparent).

    Keeps rows whose ``species`` holds ``species`` (``"Hs"`` keeps ``Hs`` and ``Mm Hs``). The organ
    is the PanglaoDB organ's key (``Mammary gland`` -> breast, ``GI tract`` -> colon except the
    gastric cell types -> stomach, ``Lungs`` -> lung ...) or ``""`` (Immune system, Vasculature,
    Connective tissue, Blood, Epithelium, Brain, Reproductive ...). No cancer genes.
    """
    what = "PanglaoDB"
    df = _read_table(url, what)
    cols = _columns(df, url, what, ["species", "official gene symbol", "cell type", "organ"])
    rep = SourceReport(SOURCE_PANGLAODB, file=str(url))
    sp = df[cols["species"]].astype(str).str.split()
    keep = sp.map(lambda toks: species in toks)
    rep.notes.append(f"{int(keep.sum())} of {len(df)} rows have species {species!r}")
    df = df[keep]
    gene = pd.Series(_clean_genes(df[cols["official gene symbol"]]), index=df.index)
    no_gene = gene == ""
    if no_gene.any():
        rep.notes.append(f"{int(no_gene.sum())} rows without a gene symbol skipped")
    df, gene = df[~no_gene], gene[~no_gene]
    rep.rows_read = len(df)
    cell_type = df[cols["cell type"]].astype(str).str.strip()
    coarse = cell_type.map(lambda n: classify_cell_type(n) or "")
    organ_name = df[cols["organ"]].astype(str).str.strip()
    organ = [_PANGLAO_ORGAN_BY_CELL_TYPE.get(ct.lower()) or canonical_organ(o) or ""
             for ct, o in zip(cell_type, organ_name)]
    _finish_report(rep, cell_type, coarse)
    rep.dropped = _counts(cell_type[coarse == ""])
    table = pd.DataFrame({"gene": gene, "cell_type": cell_type, "coarse": coarse, "organ": organ,
                          "source": SOURCE_PANGLAODB})
    table = table[table["coarse"] != ""]
    return MarkerDB(table, frozenset(), MappingReport([rep]))


# CellMarker tissue types that name a site outside the tissue class's organ key
_CELLMARKER_OTHER_SITE = {"small intestine", "ileum", "duodenum", "jejunum", "esophagus", "oviduct", "vagina",
                          "ectocervix", "adrenal gland", "omentum", "gastrointestinal tract"}


def _cellmarker_organ(tissue_class: str, tissue_type: str) -> str:
    key = canonical_organ(tissue_type)
    if key:
        return key
    if tissue_type.strip().lower() in _CELLMARKER_OTHER_SITE:
        return ""
    return canonical_organ(tissue_class) or ""


def load_cellmarker(url: str) -> MarkerDB:
    """CellMarker 2.0's table (``Cell_marker_Human`` / ``Cell_marker_All``; csv, csv.gz or xlsx).

    Uses human rows with a ``Symbol`` (one symbol per row). The organ comes from ``tissue_type``
    when it names an organ, else from ``tissue_class`` (``Intestine`` -> colon, ``Lymph node`` ->
    lymph_node, ...; small intestine, oesophagus ... -> ``""``). Rows of malignant cells (by name:
    :func:`is_malignant_cell_type`) go to the cancer gene set - except those of haematological
    cancers (leukaemia, lymphoma, myeloma: by name or ``cancer_type``), which are dropped; the other
    ``Cancer cell`` rows (immune, stromal, epithelial, stem cells found in tumours) vote for their class.
    CellMarker gives no sign for negative-selection markers (e.g. CD45/PTPRC for circulating tumour
    cells), so a few such genes reach the cancer set; that is the source's limitation.
    """
    what = "CellMarker"
    df = _read_table(url, what)
    cols = _columns(df, url, what, ["species", "tissue_class", "tissue_type", "cell_type", "cell_name", "Symbol"])
    rep = SourceReport(SOURCE_CELLMARKER, file=str(url))
    human = df[cols["species"]].astype(str).str.strip().str.lower() == "human"
    if not human.all():
        rep.notes.append(f"{int(human.sum())} of {len(df)} rows are human")
    df = df[human]
    gene = pd.Series(_clean_genes(df[cols["Symbol"]]), index=df.index)
    empty = gene == ""
    rep.notes.append(f"{int(empty.sum())} rows with an empty Symbol skipped")
    df, gene = df[~empty], gene[~empty]
    rep.rows_read = len(df)
    name = df[cols["cell_name"]].astype(str).str.strip()
    in_cancer = df[cols["cell_type"]].astype(str).str.strip().str.lower() == "cancer cell"
    cancer_type = (df[[c for c in df.columns if c.lower() == "cancer_type"][0]].astype(str)
                   if any(c.lower() == "cancer_type" for c in df.columns) else pd.Series("", index=df.index))
    haem_type = cancer_type.map(lambda s: bool(_HAEM_MALIGNANT.search(normalise_name(s))))
    kinds = {n: _kind(n) for n in name.unique()}
    kind = name.map(lambda n: kinds[n][0])
    coarse = name.map(lambda n: kinds[n][1] or "")
    malignant_by_name = kind == "malignant"
    haem_malignant = (kind == "haem") | (malignant_by_name & haem_type)
    malignant = malignant_by_name & ~haem_malignant
    coarse = coarse.where(~(malignant | haem_malignant), "")
    rep.notes.append(f"{int(in_cancer.sum())} 'Cancer cell' rows: {int((in_cancer & malignant).sum())} of malignant "
                     f"cells (-> cancer set), {int((in_cancer & (coarse != '')).sum())} of cells in tumours voting "
                     "for their class")
    if haem_malignant.any():
        rep.notes.append(f"{int(haem_malignant.sum())} rows of haematological malignant cells dropped")
    cancer = frozenset(gene[malignant])
    rep.malignant = _counts(name[malignant])
    rep.cancer_genes = len(cancer)
    _finish_report(rep, name, coarse)
    dropped_names = name.where(~(malignant_by_name & haem_type), name + " (in a haematological cancer)")
    rep.dropped = _counts(dropped_names[(coarse == "") & ~malignant])
    organ = [_cellmarker_organ(c, t) for c, t in zip(df[cols["tissue_class"]], df[cols["tissue_type"]])]
    table = pd.DataFrame({"gene": gene, "cell_type": name, "coarse": coarse, "organ": organ,
                          "source": SOURCE_CELLMARKER})
    table = table[table["coarse"] != ""]
    return MarkerDB(table, cancer, MappingReport([rep]))


def _load_cancersea_sets(url: str) -> dict[str, frozenset[str]]:
    what = "CancerSEA"
    if not storage.exists(url):
        raise ValueError(f"{what} folder {url}: not found")
    if storage.is_dir(url):
        files = [storage.join(url, n) for n in storage.listdir(url) if n.lower().endswith(".txt")]
        if not files:
            raise ValueError(f"{what} folder {url}: no *.txt gene-set files")
    else:
        files = [url]
    sets: dict[str, frozenset[str]] = {}
    for f in files:
        df = _read_table(f, what, sep="\t")
        col = _columns(df, f, what, ["GeneName"])["GeneName"]
        genes = frozenset(g for g in _clean_genes(df[col]) if g)
        if not genes:
            raise ValueError(f"{what} file {f}: no genes in column GeneName")
        stem = f.rstrip("/").rsplit("/", 1)[-1]
        sets[stem[:-4] if stem.lower().endswith(".txt") else stem] = genes
    return sets


def load_cancersea(url: str) -> frozenset[str]:
    """The union of CancerSEA's functional-state gene sets: every ``*.txt`` (TSV with a ``GeneName``
    column) in the folder ``url`` (or the single file ``url``)."""
    return frozenset().union(*_load_cancersea_sets(url).values())


def load_markers(sources: Any) -> MarkerDB:
    """The marker database a :class:`~stx_platform.labels.config.MarkerSources` describes.

    All None -> :func:`default_markers`. Otherwise the votes come from PanglaoDB and/or CellMarker
    (the embedded default's when neither is given) and the cancer set is CellMarker's malignant
    markers plus CancerSEA (the embedded default's when neither gives any). Fallbacks are noted in
    the report.
    """
    if getattr(sources, "embedded", False) or not (sources.panglaodb or sources.cellmarker or sources.cancersea):
        return default_markers()
    parts: list[MarkerDB] = []
    notes: list[str] = []
    if sources.panglaodb:
        parts.append(load_panglaodb(sources.panglaodb))
    if sources.cellmarker:
        parts.append(load_cellmarker(sources.cellmarker))
    default = None
    if not parts:
        default = default_markers()
        parts.append(MarkerDB(default.table, frozenset(), default.report))
        notes.append("no PanglaoDB/CellMarker file given: votes from the embedded default markers")
    db = MarkerDB.combine(*parts)
    cancer = set(db.cancer_genes)
    if sources.cancersea:
        sets = _load_cancersea_sets(sources.cancersea)
        cs = frozenset().union(*sets.values())
        cancer |= cs
        rep = SourceReport("CancerSEA", file=str(sources.cancersea), rows_read=sum(len(s) for s in sets.values()),
                           cancer_genes=len(cs), notes=[f"{len(sets)} gene sets: {', '.join(sorted(sets))}"])
        db = MarkerDB(db.table, db.cancer_genes, db.report.merged(MappingReport([rep])))
    if not cancer:
        default = default or default_markers()
        cancer = set(default.cancer_genes)
        notes.append("no cancer genes from CellMarker or CancerSEA: the embedded default cancer gene set is used "
                     f"({len(cancer)} genes)")
    return MarkerDB(db.table, frozenset(cancer), MappingReport(db.report.sources, db.report.notes + notes))


# --------------------------------------------------------------------------------------------------
# the embedded default
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def default_markers() -> MarkerDB:
    """The curated default database embedded in the package (``stx_platform/data/markers/``)."""
    root = importlib.resources.files("stx_platform") / "data" / "markers"
    csv = root / "default_markers.csv"
    txt = root / "default_cancer_genes.txt"
    table = pd.read_csv(io.StringIO(csv.read_text("utf-8")), comment="#", dtype=str, keep_default_na=False,
                        skipinitialspace=True)
    missing = [c for c in ("gene", "cell_type", "coarse", "organ") if c not in table.columns]
    if missing:
        raise ValueError(f"embedded default_markers.csv: missing column(s) {missing}")
    table["source"] = SOURCE_DEFAULT
    cancer = _gene_list(txt)
    db = MarkerDB(table, cancer)
    rep = _source_report(SOURCE_DEFAULT, db.table, file="stx_platform/data/markers/default_markers.csv")
    rep.cancer_genes = len(cancer)
    object.__setattr__(db, "report", MappingReport([rep]))
    return db


@functools.lru_cache(maxsize=1)
def state_genes() -> frozenset[str]:
    """Cell-state genes (cell cycle, interferon response, immediate-early / heat shock) that cells
    of every lineage switch on (``stx_platform/data/markers/state_genes.txt``): no lineage evidence."""
    return _gene_list(importlib.resources.files("stx_platform") / "data" / "markers" / "state_genes.txt")


def _gene_list(txt) -> frozenset[str]:
    """The symbols of one of the package's gene-list files: one per line, '#' starts a comment."""
    return frozenset(ln.split("#", 1)[0].strip().upper() for ln in txt.read_text("utf-8").splitlines()) - {""}
