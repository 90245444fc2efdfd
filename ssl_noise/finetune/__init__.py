"""Fine-tuning under controlled label noise: an initialisation and a noise model in, a complete run folder out.

:mod:`.prepare` checks the input and corrupts the labels, :mod:`.inputs` feeds the images, :mod:`.loop` trains
(``train_one_epoch`` / ``evaluate``) and :mod:`.run` writes the run folder (format: docs/formats.md).
"""

from ssl_noise.finetune.inputs import ENCODED, Inputs, encoded_splits
from ssl_noise.finetune.loop import FitResult, evaluate, fit, fit_subset, predict_probs, train_one_epoch
from ssl_noise.finetune.prepare import Prepared, prepare, resolve_config
from ssl_noise.finetune.run import finetune, result_row, summarise

__all__ = ["ENCODED", "FitResult", "Inputs", "Prepared", "encoded_splits", "evaluate", "finetune", "fit",
           "fit_subset", "predict_probs", "prepare", "resolve_config", "result_row", "summarise", "train_one_epoch"]
