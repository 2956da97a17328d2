"""Patches: slide -> fixed-size patches at a target resolution with nucleus instance maps whose
ids point at cells of the slide (stage 3 of the architecture). Independent of any label config."""

from stx_platform.patches.config import PatchConfig
from stx_platform.patches.cut import (
    cut_patch,
    fill_polygons,
    patches_for_sample,
    plan_grid,
    plan_patches,
    tissue_mask,
)
from stx_platform.patches.schema import (
    PATCH_SCHEMA,
    config_from_schema,
    decode_image,
    decode_instance_map,
    encode_image,
    encode_instance_map,
    records_to_table,
    schema_for,
)

__all__ = [
    "PATCH_SCHEMA", "PatchConfig", "config_from_schema", "cut_patch", "decode_image", "decode_instance_map",
    "encode_image", "encode_instance_map", "fill_polygons", "patches_for_sample", "plan_grid", "plan_patches", "records_to_table",
    "schema_for", "tissue_mask",
]
