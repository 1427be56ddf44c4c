"""Gradient inversion by a curious server (threat model ``server``): ``analytic``, ``dlg``,
``inverting_gradients`` and ``tableak``; shared machinery in :mod:`attacks.inversion.common`."""
