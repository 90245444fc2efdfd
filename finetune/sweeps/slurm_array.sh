#!/usr/bin/env bash
# Spread one sweep over a SLURM job array: task i runs shard i of N, all tasks write into one shared runs folder.
#
#   sbatch --array=0-9 finetune/sweeps/slurm_array.sh finetune/sweeps/bloodmnist_study.yaml
#   # when the array is done (or to see progress), on any node:
#   ssl-noise --runs "$SSL_NOISE_RUNS" sweep finetune/sweeps/bloodmnist_study.yaml --dry-run
#   ssl-noise --runs "$SSL_NOISE_RUNS" report "$SSL_NOISE_RUNS/sweeps/bloodmnist_study.csv" --out study.md
#
# Shards are disjoint and cover the grid (cells sorted by id, every N-th). Cells are also claimed atomically, so a
# task that is re-queued, or an extra `ssl-noise sweep` started by hand on the same runs folder, never runs a cell
# twice; a finished cell is never run again; a failed one is recorded and retried by the next invocation.
# Every task expands the spec against the same registry, so do not add encoders while the array runs (an init
# given by method name would then resolve differently on later tasks).
#
#SBATCH --job-name=ssl-noise-sweep
#SBATCH --array=0-9
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --mem=16G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

SPEC=${1:?usage: sbatch --array=0-(N-1) slurm_array.sh SPEC.yaml}
# Shared folders (a network filesystem every node mounts at the same path): registry, runs, data.
export SSL_NOISE_CHECKPOINTS=${SSL_NOISE_CHECKPOINTS:-$PWD/checkpoints}
export SSL_NOISE_RUNS=${SSL_NOISE_RUNS:-$PWD/runs}
export SSL_NOISE_DATA=${SSL_NOISE_DATA:-$PWD/../shared/data}

# SLURM_ARRAY_TASK_COUNT is the array size for --array=0-(N-1).
ssl-noise --threads "${SLURM_CPUS_PER_TASK:-1}" sweep "$SPEC" --quiet \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
