"""Attacks: membership inference, gradient inversion, audits; registered in :data:`ATTACKS`."""

from attacks.base import ATTACKS, Attack  # noqa: F401
from attacks.membership import loss_threshold  # noqa: F401,E402  (registration)

__all__ = ["ATTACKS", "Attack"]
