"""Synthetic label noise: transition matrices, label corruption and the noise file.

A noisy-label result is only comparable when its noise is, so every class-conditional kind of noise is one
row-stochastic matrix ``T[i, j] = P(noisy = j | clean = i)`` (:mod:`.matrices`), applied with an explicit generator
that also reports the realised rate (:mod:`.corruption`), and stored as ``index,clean_label,noisy_label``
(:mod:`.files`). Instance-dependent noise (:mod:`.instance`) is a process over the images with the same outputs.
Definitions and format: docs/formats.md, "Noise file".
"""

from ssl_noise.noise.corruption import NoisyLabels, corrupt, expected_rate
from ssl_noise.noise.instance import IMAGE_NOISE_TYPES, InstanceNoise, build_noise, check_noise_type, instance
from ssl_noise.noise.files import NOISE_CSV_COLUMNS, NoiseFile, noise_file, read_noise_csv, write_noise_csv
from ssl_noise.noise.matrices import (
    NOISE_TYPES,
    ROW_SUM_TOL,
    SHORT_NAMES,
    ClassMap,
    MajorityNoiseError,
    NoiseWarning,
    PathLike,
    asymmetric,
    check_majority,
    load_class_map,
    load_matrix,
    pairflip,
    short_label,
    symmetric,
    transition_matrix,
    uniform,
    validate_matrix,
)

__all__ = [
    "IMAGE_NOISE_TYPES", "NOISE_CSV_COLUMNS", "NOISE_TYPES", "ROW_SUM_TOL", "SHORT_NAMES", "ClassMap", "InstanceNoise",
    "MajorityNoiseError", "NoiseFile", "NoiseWarning", "NoisyLabels", "PathLike", "asymmetric", "build_noise",
    "check_majority", "check_noise_type", "corrupt", "expected_rate", "instance", "load_class_map", "load_matrix",
    "noise_file", "pairflip", "read_noise_csv", "short_label", "symmetric", "transition_matrix", "uniform",
    "validate_matrix", "write_noise_csv",
]
