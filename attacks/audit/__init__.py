"""Empirical privacy audits (lower bounds on ε beside the accountant's upper bound)."""
