"""``model_check``: hospitals confirm they all received the same model, and refuse
architectures outside an allow-list, before they train.

Answers a malicious server that sends different models to different hospitals (Pasquini,
Francati, Ateniese, CCS 2022) or changes the architecture it sends (Fowl et al., ICLR 2022;
Boenisch et al., EuroS&P 2023).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Mapping, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.types import ConfigError
from defenses.base import DEFENSES, Defense
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


log = logging.getLogger(__name__)


def model_digest(params: torch.Tensor, architecture: str) -> bytes:
    """SHA-256 of the architecture fingerprint and the exact float32 bytes of the parameters."""
    h = hashlib.sha256(architecture.encode())
    h.update(params.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.digest()


def pairwise_keys(names: tuple[str, ...], round_index: int) -> dict[tuple[str, str], bytes]:
    """An authentication key per pair of hospitals from an X25519 key agreement (HKDF-SHA256),
    as in secure aggregation's AdvertiseKeys round: the server relays the public keys and the
    tags but cannot forge a tag between two hospitals. Both ends derive the same key."""
    private = {n: X25519PrivateKey.generate() for n in names}
    public = {n: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for n, k in private.items()}
    out = {}
    for i, u in enumerate(names):
        for v in names[i + 1 :]:
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

            shared = private[u].exchange(X25519PublicKey.from_public_bytes(public[v]))
            info = b"privbench/model_check/" + str(round_index).encode() + b"/" + u.encode() + b"/" + v.encode()
            out[(u, v)] = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
    return out


def consistency_failures(digests: Mapping[str, bytes], round_index: int) -> list[tuple[str, str]]:
    """Every hospital v sends every other u its digest with an HMAC-SHA256 tag under their
    pairwise key (the server relays both); u verifies the tag, then compares the digest with
    its own. Returns the pairs that disagree or whose tag fails (empty: all received the same)."""
    names = tuple(sorted(digests))
    keys = pairwise_keys(names, round_index)
    relayed = {(u, v): (digests[v], hmac.new(key, digests[v], hashlib.sha256).digest()) for (u, v), key in keys.items()}
    bad = []
    for (u, v), (digest, tag) in relayed.items():
        if not hmac.compare_digest(tag, hmac.new(keys[(u, v)], digest, hashlib.sha256).digest()):
            bad.append((u, v))  # a relay the server altered
        elif not hmac.compare_digest(digests[u], digest):
            bad.append((u, v))
    return bad


@DEFENSES.register("model_check")
class ModelCheck(Defense):
    """Client-side checks of the model each hospital receives.

    Runs on the clients, before local training (``check_received``): every hospital hashes
    the model it received (architecture fingerprint + exact parameter bytes, SHA-256) and
    sends the digest to every other hospital, authenticated with a key from a pairwise X25519
    key agreement (the same agreement secure aggregation runs), so the relaying server cannot
    forge it; any mismatch means the server sent different models. Each hospital also refuses
    an architecture other than the configured one unless it is in ``allowed_architectures``
    (fingerprints from ``bench.federated.architecture_of``). On either, the hospitals abort the
    round — a named outcome, ``model_inconsistency`` or ``architecture_not_allowed``, logged and
    kept in ``RoundRecord.aborted`` — and train nothing: the server learns nothing that round and
    the global model stays as it was. Privacy unit: none; no DP events (not DP); hides nothing
    by itself. It does not detect crafted *parameters* sent identically to everyone inside an
    allowed architecture (e.g. trap weights in the MLP's own first layer).

    Cost metrics: ``defense/model_check/rounds_aborted``.
    """

    name = "model_check"

    @dataclass(frozen=True)
    class Params:
        """Attributes:
        allowed_architectures: fingerprints accepted beside the configured architecture.
        check_consistency: compare the hospitals' digests every round.
        """

        allowed_architectures: tuple[str, ...] = ()
        check_consistency: bool = True

    @classmethod
    def check(cls, params, cfg) -> None:
        bad = [a for a in params.allowed_architectures if len(a) != 16 or any(c not in "0123456789abcdef" for c in a)]
        if bad:
            raise ConfigError(
                f"defenses.model_check.allowed_architectures: got {bad[0]!r}; expected 16 hex digits from bench.federated.architecture_of"
            )

    def __init__(self, params) -> None:
        super().__init__(params)
        self.aborted: list[tuple[int, str]] = []

    def check_received(self, received, architectures, configured, round) -> Optional[str]:
        allowed = {configured, *self.params.allowed_architectures}
        refused = sorted(n for n, a in architectures.items() if a not in allowed)
        if refused:
            return self._abort(round, f"architecture_not_allowed: {refused[0]} received architecture {architectures[refused[0]]}")
        if self.params.check_consistency and len(received) > 1:
            digests = {n: model_digest(p, architectures[n]) for n, p in received.items()}
            bad = consistency_failures(digests, round)
            if bad:
                return self._abort(round, f"model_inconsistency: {bad[0][0]} and {bad[0][1]} received different models")
        return None

    def _abort(self, round: int, reason: str) -> str:
        log.warning("model_check: round %d: %s", round, reason)
        self.aborted.append((round, reason))
        return reason

    def metrics(self) -> dict[str, float]:
        return {"defense/model_check/rounds_aborted": float(len(self.aborted))}

    def tags(self) -> dict[str, str]:
        if not self.aborted:
            return {}
        return {"model_check_aborts": "; ".join(f"round {r}: {why}" for r, why in self.aborted)[:4000]}
