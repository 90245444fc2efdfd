"""The encoder registry: pretrained backbones in folders named by their content, checked on every load.

A fine-tuning result means something only if we know exactly which encoder it started from and how that encoder
was made, so each entry (``checkpoints/<id>/``) holds plain-torchvision safetensors weights, the full provenance and
a sha256 that every load re-checks. Writing: :mod:`.entries`; finding: :mod:`.lookup`; loading: :mod:`.load`.
Format: docs/formats.md, "Registry entry".
"""

from ssl_noise.registry.entries import encoder_state_dict, remove_entry, save_entry
from ssl_noise.registry.layout import (
    CONFIG_FILE,
    FILLED_META,
    HOW_TO_CREATE,
    LOG_FILE,
    META_FILE,
    REQUIRED_META,
    SCHEMA_VERSION,
    STRIP_PREFIXES,
    WEIGHTS_FILE,
    make_id,
    root_problem,
)
from ssl_noise.registry.hub import export_hf
from ssl_noise.registry.load import export_entry, export_instructions, load_encoder, verify_all, verify_entry
from ssl_noise.registry.lookup import list_entries, pretrain_data_spec, read_meta, resolve, resolve_id

__all__ = [
    "CONFIG_FILE", "FILLED_META", "HOW_TO_CREATE", "LOG_FILE", "META_FILE", "REQUIRED_META", "SCHEMA_VERSION",
    "STRIP_PREFIXES", "WEIGHTS_FILE", "encoder_state_dict", "export_entry", "export_hf", "export_instructions",
    "list_entries", "load_encoder", "make_id", "pretrain_data_spec", "read_meta", "root_problem", "remove_entry",
    "resolve", "resolve_id",
    "save_entry", "verify_all", "verify_entry",
]
