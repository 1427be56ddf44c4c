"""``withheld_noise``: central client-level DP whose server does not add its noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import ATTACKS, Attack, per_example_loss
from attacks.malicious.common import ADVERSARY, check_one_malicious
from bench.types import ConfigError, MembershipScores, PlanInputs, ServerPlan, ServerView


# defenses whose noise the server adds in its own hook (attacks may not import defenses: named
# here; distributed_dp's noise travels inside each hospital's input and cannot be withheld)
SERVER_NOISE = ("client_dp",)


@ATTACKS.register("withheld_noise")
class WithheldNoise(Attack):
    """Central DP with a malicious server: it withholds the noise it should add.

    Threat model: a **malicious** server (``server`` view, adversary ``malicious_server``).
    What it does (capability ``withhold_noise``): the server-side hooks that add central noise
    (``client_dp``'s ``transform_aggregate``) run — so the hospitals are told the usual ε — but
    the server applies the clean sum. It then scores the records it asks about by their loss
    under the model it released (the loss threshold of Yeom et al. (2018): higher = −loss), which
    the noise should have protected. Compare the same cell without this attack (the honest
    server adds the noise). Needs a defense with server-side noise (``client_dp``).
    """

    name = "withheld_noise"
    threat_model = "server"
    kind = "membership"
    adversary = ADVERSARY
    capabilities = ("withhold_noise",)

    @dataclass(frozen=True)
    class Params:
        pass

    @classmethod
    def check(cls, params, cfg) -> None:
        check_one_malicious(cls.name, cfg)
        noisy = [s.name for s in cfg.defenses if s.name in SERVER_NOISE]
        if not noisy:
            raise ConfigError("attacks.withheld_noise: no defense adds noise on the server (add client_dp); there is nothing to withhold")

    def server_plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ServerPlan:
        return ServerPlan(capabilities=self.capabilities, withhold_noise=True)

    def run(self, view: ServerView, rng: np.random.Generator) -> MembershipScores:
        if view.final_params is None:
            raise ConfigError("attacks.withheld_noise: the view holds no released model")
        from bench.models import load_flat

        model = load_flat(view.model_fn(), view.final_params)
        rec = view.known_records
        loss = per_example_loss(model, rec.x, rec.y).numpy()
        return MembershipScores(ids=rec.ids.copy(), scores=-loss.astype(np.float64), extras={"adversary": ADVERSARY})
