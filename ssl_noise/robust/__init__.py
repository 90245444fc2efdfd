"""Noisy-label methods for fine-tuning, one file each, registered in ``ROBUST`` by ``@ROBUST.register``.

Adding a method (Co-teaching, VoG, HSA-NRL, a k-NN filter, ...): write ``ssl_noise/robust/<name>.py`` with a
subclass of :class:`RobustMethod` (hooks and their contract: :mod:`ssl_noise.robust.base`) decorated with
``@ROBUST.register("<name>")``, and import it below. ``ssl-noise finetune --method <name>`` then runs it, and the
tests parametrised over ``ROBUST`` exercise it (a tiny run end to end) without a new test. The methods, their
papers and deviations: docs/methods.md#noisy-label-methods-ssl_noiserobust
"""

from ssl_noise.robust import (ce, coteaching, coteaching_plus, dividemix, elr, gce, hsa_nrl, jocor,  # noqa: F401
                              knn_filter, nshe, sce, vog)  # (fill the registry)
from ssl_noise.robust.base import ROBUST, Batch, Classifier, FinetuneContext, RobustMethod

__all__ = ["ROBUST", "Batch", "Classifier", "FinetuneContext", "RobustMethod"]
