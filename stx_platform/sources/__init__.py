"""Slide sources: HEST-1k folders, raw Xenium bundles, PanNuke folds; all through fsspec URLs.

A sample is addressed by a *reference*: ``ROOT#ID`` for a HEST-1k sample (``ROOT`` the folder
holding ``metadata/``, ``wsis/``...), or the URL of a Xenium bundle folder.
"""

from __future__ import annotations

from stx_platform import storage
from stx_platform.sources.hest import list_hest_samples, read_hest_sample
from stx_platform.sources.sample import Sample, folder_sample_id
from stx_platform.sources.xenium import (
    is_xenium_bundle,
    list_xenium_bundles,
    read_xenium_bundle,
)

__all__ = ["Sample", "list_samples", "read_sample", "read_hest_sample", "read_xenium_bundle", "sample_id_of",
           "sample_refs"]


def list_samples(url: str) -> list[str]:
    """References of every sample under ``url``: HEST samples, Xenium bundles, or ``url`` itself."""
    url = str(url).rstrip("/")
    if is_xenium_bundle(url):
        return [url]
    refs = [f"{url}#{sid}" for sid in list_hest_samples(url)]
    refs += [storage.join(url, name) for name in list_xenium_bundles(url)]
    return refs


def sample_refs(url: str) -> list[str]:
    """``[url]`` for one ``ROOT#ID`` reference, else every sample under ``url``; an error when none."""
    refs = [url] if "#" in url else list_samples(url)
    if not refs:
        from stx_platform.sources.hest import hest_technologies

        other = sorted(set(hest_technologies(url).values()))
        raise ValueError(f"no samples under {url}" + (f" (only {', '.join(other)} samples, which have no per-cell "
                                                       "expression)" if other else ""))
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
