"""Sweeps: a grid of fine-tuning runs declared in YAML, run once each, by any number of workers.

``spec`` reads the YAML, ``cells`` expands it into cells with stable ids, ``queue`` is the file-lock job queue
(claims, done and failed records), ``runner`` runs cells in workers, ``results`` collects their rows.
Format: docs/formats.md.
"""

from ssl_noise.sweep.cells import (
    Cell,
    cell_id,
    dump_cells,
    expand,
    noise_key,
    parse_shard,
    remembered_overrides,
    shard,
)
from ssl_noise.sweep.log import Log, log_stderr
from ssl_noise.sweep.queue import (
    DEFAULT_STALE_AFTER_S,
    cell_status,
    claim,
    done_record,
    release,
)
from ssl_noise.sweep.runner import (
    WorkerReport,
    check_pairing,
    run_cell,
    run_sweep,
    work,
)
from ssl_noise.sweep.executor import ClusterOptions, gather, submit
from ssl_noise.sweep.spec import SweepSpec, find_file, load_spec
from ssl_noise.sweep.results import collect, save_table, write_table

__all__ = ["DEFAULT_STALE_AFTER_S", "Cell", "ClusterOptions", "Log", "SweepSpec", "WorkerReport", "cell_id",
           "cell_status", "check_pairing", "claim", "collect", "done_record", "dump_cells", "expand", "find_file",
           "gather", "load_spec", "log_stderr", "noise_key", "parse_shard", "release", "remembered_overrides",
           "run_cell", "run_sweep", "save_table", "shard", "submit", "work", "write_table"]
