"""Defenses: one module each, registered in :data:`DEFENSES`."""

from defenses.base import DEFENSES, Defense  # noqa: F401
from defenses import clipping  # noqa: F401,E402  (registration)
from defenses import client_dp, dp_sgd, secure_aggregation, sparsify  # noqa: F401,E402  (registration)
from defenses import distributed_dp  # noqa: F401,E402  (registration)
from defenses import model_check  # noqa: F401,E402  (registration)

__all__ = ["DEFENSES", "Defense"]
