"""Attacks: membership inference, gradient inversion, audits; registered in :data:`ATTACKS`."""

from attacks.base import ATTACKS, Attack  # noqa: F401
from attacks.membership import loss_threshold  # noqa: F401,E402  (registration)
from attacks.membership import lira, rmia, source_inference, update_cosine  # noqa: F401,E402  (registration)
from attacks.membership import peer_fedmia  # noqa: F401,E402  (registration)
from attacks.audit import canary, whitebox  # noqa: F401,E402  (registration)
from attacks.inversion import analytic, dlg, inverting_gradients, tableak  # noqa: F401,E402  (registration)
from attacks.attribute import blackbox, whitebox  # noqa: F401,E402  (registration)
from attacks.malicious import imprint, inconsistency, withheld_noise  # noqa: F401,E402  (registration)

__all__ = ["ATTACKS", "Attack"]
