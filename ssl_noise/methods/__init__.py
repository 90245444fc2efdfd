"""Self-supervised methods, one file each, registered in ``METHODS`` by the ``@METHODS.register`` decorator.

Adding a method: write ``ssl_noise/methods/<name>.py`` with a subclass of :class:`SSLMethod` decorated with
``@METHODS.register("<name>")`` and import it below. The tests are parametrised over ``METHODS``, so a new method
is exercised (forward, backward, step, registry round trip) without writing a test.
"""

from ssl_noise.methods import (  # noqa: F401  (fill the registry)
    barlowtwins, byol, dino, jigsaw, moco, rotation, simclr, simsiam, vicreg,
)
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod

__all__ = ["METHODS", "InputSpec", "SSLMethod"]
