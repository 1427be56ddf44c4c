"""Malicious-server attacks: the server deviates from the protocol through its own hooks
(what it sends, what it adds) and then reads what comes back (``bench.types.ServerPlan``)."""
