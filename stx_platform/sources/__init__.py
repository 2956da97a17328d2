"""Slide sources: HEST-1k folders, raw Xenium bundles, PanNuke folds; all through fsspec URLs.

A sample is addressed by a *reference*: ``ROOT#ID`` for a HEST-1k sample (``ROOT`` the folder
holding ``metadata/``, ``wsis/``...), or the URL of a Xenium bundle folder.
"""

from __future__ import annotations

from stx_platform import storage
from stx_platform.sources.hest import hest_technologies, read_hest_sample
from stx_platform.sources.sample import Sample, folder_sample_id
from stx_platform.sources.xenium import (
    is_xenium_bundle,
    list_xenium_bundles,
    read_xenium_bundle,
)

__all__ = ["Sample", "find_samples", "list_samples", "read_sample", "read_hest_sample", "read_xenium_bundle", "sample_id_of",
           "sample_refs"]


def find_samples(url: str) -> tuple[list[str], dict[str, str]]:
    """(references of every sample under ``url``, id -> technology of the HEST samples left out
    as not Xenium): HEST samples, Xenium bundles, or ``url`` itself. One pass over the metadata."""
    url = str(url).rstrip("/")
    if is_xenium_bundle(url):
        return [url], {}
    techs = hest_technologies(url)
    refs = [f"{url}#{sid}" for sid, tech in techs.items() if tech.lower() == "xenium"]
    refs += [storage.join(url, name) for name in list_xenium_bundles(url)]
    return refs, {sid: tech for sid, tech in techs.items() if tech.lower() != "xenium"}


def list_samples(url: str) -> list[str]:
    """References of every sample under ``url``: HEST samples, Xenium bundles, or ``url`` itself."""
    return find_samples(url)[0]


def sample_refs(url: str, skipped: dict | None = None) -> list[str]:
    """``[url]`` for one ``ROOT#ID`` reference, else every sample under ``url``; an error when none.
    ``skipped``, when given, receives the non-Xenium HEST samples left out (id -> technology)."""
    if "#" in url:
        return [url]
    refs, other = find_samples(url)
    if skipped is not None:
        skipped.update(other)
    if not refs:
        kinds = sorted(set(other.values()))
        raise ValueError(f"no samples under {url}" + (f" (only {', '.join(kinds)} samples, which have no per-cell "
                                                       "expression)" if kinds else ""))
    return refs


def sample_id_of(ref: str) -> str:
    """The sample id a reference names: the part after ``#``, or the bundle folder's name (its
    parent's for Xenium Ranger's ``<id>/outs``)."""
    return ref.rsplit("#", 1)[-1] if "#" in ref else folder_sample_id(ref)


def read_sample(ref: str, **kwargs) -> Sample:
    """Read a sample from its reference (see module docstring)."""
    if "#" in ref:
        root, sid = ref.rsplit("#", 1)
        return read_hest_sample(root, sid, **kwargs)
    return read_xenium_bundle(ref, **kwargs)
