"""Noisy-label methods for fine-tuning, one file each, registered in ``ROBUST`` by ``@ROBUST.register``.

Adding a method (Co-teaching, VoG, HSA-NRL, a k-NN filter, ...): write ``ssl_noise/robust/<name>.py`` with a
subclass of :class:`RobustMethod` (hooks and their contract: :mod:`ssl_noise.robust.base`) decorated with
``@ROBUST.register("<name>")``, and import it below. ``ssl-noise finetune --method <name>`` then runs it, and the
tests parametrised over ``ROBUST`` exercise it (a tiny run end to end) without a new test.
"""

from ssl_noise._registry import Registry

ROBUST: Registry = Registry("robust method")

from ssl_noise.robust import ce  # noqa: E402,F401  (fill the registry)
# --- issue-5 imports ---
from ssl_noise.robust import coteaching, vog  # noqa: E402,F401
# --- issue-6 imports ---
from ssl_noise.robust import hsa_nrl, knn_filter, nshe  # noqa: E402,F401
from ssl_noise.robust.base import Batch, Classifier, FinetuneContext, RobustMethod  # noqa: E402

__all__ = ["ROBUST", "Batch", "Classifier", "FinetuneContext", "RobustMethod"]
