"""Attribute inference: what a model (or an update) tells an adversary about a patient's sensitive attribute."""
