"""Typed configs from YAML plus ``key=value`` overrides: one loader for every config section.

A config file may hold one section (``labels``, ``patches``, ``train``, ...) or several; each
typed model reads its own section, or the whole document when that section is absent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import yaml
from pydantic import BaseModel

from stx_platform import storage

M = TypeVar("M", bound=BaseModel)

#: the sections a combined config file may hold
SECTIONS: tuple[str, ...] = ("labels", "patches", "quality", "train", "tune")


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """``["a.b=3", "c=[1, 2]"]`` -> nested keys set in ``data`` (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value) if value else None
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s keys set, mappings merged key by key (so ``augmentation.p_blur=0.5``
    on a preset changes that one field of the preset's ``augmentation``, not the others)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_section(url: str | None, section: str) -> dict:
    """The ``section`` mapping of a YAML file: ``doc[section]`` when the file is split into
    sections (any of :data:`SECTIONS` at top level; a missing one is empty), else the whole file."""
    if not url:
        return {}
    try:
        doc = yaml.safe_load(storage.read_bytes(url)) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{url}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{url}: expected a mapping of config fields, got {type(doc).__name__}")
    if any(k in SECTIONS for k in doc):
        inner = doc.get(section) or {}
        if not isinstance(inner, dict):
            raise ValueError(f"{url}: section {section!r} must be a mapping of config fields")
        return dict(inner)
    return dict(doc)


def load_config(model: type[M], url: str | None, section: str, overrides: Iterable[str] = ()) -> M:
    """A validated ``model`` from the ``section`` of a YAML file (or its defaults), then overrides."""
    return model.model_validate(apply_overrides(read_section(url, section), overrides))


def split_overrides(items: Iterable[str] | None, section: str, default: str | None = None) -> list[str]:
    """The ``--set`` items meant for ``section`` (``section.`` prefix stripped). Items whose key
    starts with none of :data:`SECTIONS` go to ``default``."""
    known = SECTIONS
    out = []
    for item in items or ():
        key = item.split("=", 1)[0]
        head = key.split(".", 1)[0]
        if head in known and "." in key:
            if head == section:
                out.append(item[len(section) + 1:])
        elif section == default:
            out.append(item)
    return out
