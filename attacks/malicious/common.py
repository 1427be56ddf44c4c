"""What every malicious-server attack shares: the plan hook, the one-malicious-server rule,
and parameter surgery on flat vectors.

A malicious attack declares ``server_plan(inputs, rng) -> ServerPlan`` (what it does to the
protocol, before training); ``bench.runner`` hands the plan to ``run_federated``, which applies
it, and the attack then receives the server's view as usual (with what it sent to whom).
"""

from __future__ import annotations

from typing import Any, Sequence

from bench.types import ConfigError
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


ADVERSARY = "malicious_server"


def check_one_malicious(name: str, cfg: Any) -> None:
    """One server per federation: refuse a cell with two malicious-server attacks (their plans
    would contradict each other)."""
    from attacks.base import ATTACKS

    malicious = [s.name for s in cfg.attacks if hasattr(ATTACKS.get(s.name), "server_plan")]
    if len(malicious) > 1:
        raise ConfigError(
            f"attacks: {malicious[0]!r} and {malicious[1]!r} are both a malicious server; one server acts per cell, keep one"
        )


def refuse_outsiders(name: str, cfg: Any, why: str) -> None:
    """Refuse outsider attacks in the same cell (their reference federations replay the
    configured protocol, not the one this server ran)."""
    from attacks.base import ATTACKS

    others = [s.name for s in cfg.attacks if ATTACKS.get(s.name).threat_model != "server"]
    if others:
        raise ConfigError(f"attacks: {others[0]!r} cannot share a cell with {name!r} ({why}); run it in another cell")


def offsets(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Parameter name -> (start, stop) in the flat vector (``bench.models.flatten`` order)."""
    out, o = {}, 0
    for n, p in model.named_parameters():
        out[n] = (o, o + p.numel())
        o += p.numel()
    return out


def participants_of(rounds: Sequence[Any], wanted: Sequence[int]) -> dict[int, Any]:
    """The view's rounds by number, restricted to ``wanted`` (a round not trained is refused)."""
    by_round = {r.round: r for r in rounds}
    missing = [r for r in wanted if r not in by_round]
    if missing:
        raise ConfigError(f"attacks.rounds: round {missing[0]} was not trained; pick from 1..{len(rounds)}")
    return {r: by_round[r] for r in wanted}
