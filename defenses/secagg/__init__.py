"""Pieces of the Bonawitz et al. (CCS 2017) secure-aggregation protocol.

``shamir`` (t-of-n secret sharing over a prime field), ``prg`` (AES-CTR mask expansion),
``quantization`` (fixed point into the ring Z_{2^k}), ``protocol`` (the four rounds, run
in one process with real cryptography).
"""
