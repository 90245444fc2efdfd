"""``ssl-noise advise``: on a researcher's own labels, how noisy they are, which files to check first, and which
init and method to train with, measured within a time budget.

Steps (each a module): :mod:`.look` (sizes, balance, duplicates), the noise estimate with T̂ (``ssl_noise.estimate``),
the suspicious files (``ssl_noise.detect``'s k-NN and cleanlab detectors), a test set that can be trusted
(:mod:`.score`), the pilot (:mod:`.plan`: a short SimCLR pretraining and a paired sweep) and the advice page
(:mod:`.write`). Method: docs/methods.md#advise-ssl_noiseadvise-ssl-noise-advise
"""

from ssl_noise.advise.run import Advice, run_advise

__all__ = ["Advice", "run_advise"]
