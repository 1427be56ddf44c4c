"""The shared vocabulary: data, what the mechanisms did, what adversaries observed, what was true.

Three vocabularies are kept apart (see DESIGN.md):

* what the mechanisms did: :class:`DPEvent` and the :class:`TrainingRecord`;
* what an adversary observed: :class:`ServerView`, :class:`OutsiderView`;
* what was true: :class:`GroundTruth`. Attacks never receive it; only scoring does.

Parameters and updates travel as flat 1-D ``float32`` tensors in the order of
``model.parameters()`` (see :func:`bench.models.flatten` / :func:`bench.models.load_flat`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Optional

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `import bench.cli` (privbench --version) stays torch-free
    import torch

ThreatModel = Literal["outsider", "server", "peer"]
THREAT_MODELS: tuple[str, ...] = ("outsider", "server", "peer")


class ConfigError(ValueError):
    """Bad user input (config, data, CLI). The message is one line: what, where, and the fix."""


class ProtocolAbort(RuntimeError):
    """A federated protocol could not complete (e.g. too many secure-aggregation dropouts)."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Feature:
    """One original (pre-encoding) feature of a tabular dataset.

    Attributes:
        name: column name, e.g. ``"chol"``.
        kind: ``"continuous"`` or ``"categorical"`` (binary features are categorical).
        columns: ``(start, stop)`` slice of the model-input columns that encode it
            (one column for continuous, one-hot columns for categorical).
        categories: category labels for categorical features, in one-hot column order.
        mean, std: standardisation applied to a continuous feature (value = x * std + mean).
    """

    name: str
    kind: Literal["continuous", "categorical"]
    columns: tuple[int, int]
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class DatasetInfo:
    """Public metadata of a dataset: what the model consumes and how to decode records."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    features: tuple[Feature, ...] = ()  # tabular only; empty for images
    modality: Literal["tabular", "image"] = "tabular"
    class_names: tuple[str, ...] = ()

    @property
    def num_inputs(self) -> int:
        return int(np.prod(self.input_shape))



@dataclass(frozen=True)
class InputLayer:
    """The first layer with parameters of a model, described without building it (so that
    ``privbench validate`` checks an architecture without importing torch).

    A built-in model states it through ``input_layer(info, cfg)``; an attack's
    ``check_input_layer(params, layer, info)`` decides on it exactly as its ``check_model`` would
    on the built model (tests/test_startup.py compares the two).

    Attributes:
        path: the layer's name in ``named_modules()`` (``"1"`` for the second entry of a Sequential).
        type: its class name (``Linear``, ``Conv2d``).
        in_features: the inputs of a ``Linear`` (None for other layers).
        bias: whether it has a bias.
    """

    path: str
    type: str
    in_features: Optional[int] = None
    bias: bool = True

@dataclass(frozen=True)
class Records:
    """A block of records with stable integer ids (ids are unique within a federation)."""

    ids: np.ndarray  # int64, shape (n,)
    x: torch.Tensor  # float32, shape (n, *input_shape)
    y: torch.Tensor  # int64, shape (n,)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, index: np.ndarray) -> "Records":
        import torch

        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return Records(ids=self.ids[np.asarray(index, dtype=np.int64)], x=self.x[idx], y=self.y[idx])

    @staticmethod
    def concat(parts: "list[Records]") -> "Records":
        if not parts:
            raise ValueError("no records to concatenate")
        import torch

        return Records(
            ids=np.concatenate([p.ids for p in parts]),
            x=torch.cat([p.x for p in parts]),
            y=torch.cat([p.y for p in parts]),
        )


@dataclass(frozen=True)
class Site:
    """One hospital: its training records (members) and its own test records."""

    name: str
    train: Records
    test: Records


@dataclass(frozen=True)
class Federation:
    """Everything the simulation needs; never handed to an attack as a whole.

    Attributes:
        sites: the hospitals, each with member (training) and local test records.
        test: the global test set (union of the sites' test records).
        candidates: members and held-out non-members of every site, shuffled: the records an
            attacker asks about. Their membership lives only in :class:`GroundTruth`.
        population: data from the same distribution that an attacker may use to train
            reference models (the candidates themselves, without labels of membership).
    """

    info: DatasetInfo
    sites: tuple[Site, ...]
    test: Records
    candidates: Records
    population: Records
    canaries: Optional[Records] = None  # audit canaries (each in training with prob. ½), see attacks/audit
    audit_canaries: Optional["InsertedCanaries"] = None  # gradient or client canaries (bench.canaries)
    # fairness.attributes' subgroups by record id: a hospital knows its own patients' groups, and
    # dp_sgd's group_clip needs them; run_federated hands each trainer only its own records' codes
    sensitive: tuple["SensitiveAttribute", ...] = ()

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)


_UNSAFE = re.compile(r"[^\w.\- ]+")


def safe_label(text: str) -> str:
    """A subgroup label MLflow accepts in a metric name (``^[/\\w.\\- ]*$``): other characters become ``_``."""
    return _UNSAFE.sub("_", str(text)).strip() or "_"


@dataclass(frozen=True)
class SensitiveAttribute:
    """A sensitive attribute's subgroup of every record (ground truth only; see bench.fairness).

    Attacks never receive it: when the attribute is a model input its value is in the records'
    features anyway; when it is held out (``model_input=False``) it was dropped from the
    features before encoding and exists only here.

    Attributes:
        name: the column, e.g. ``"sex"``.
        groups: the subgroup labels, MLflow-safe (``female``, ``under_55``, ``55_and_over``).
        codes: the subgroup index of each record, indexed by record id (``-1``: value missing).
        model_input: whether the column is among the model's features.
    """

    name: str
    groups: tuple[str, ...]
    codes: np.ndarray
    model_input: bool = True

    def of(self, ids: np.ndarray) -> np.ndarray:
        """Subgroup index of the records ``ids`` (``-1``: missing)."""
        return self.codes[np.asarray(ids, dtype=np.int64)]

    def of_any(self, ids: np.ndarray) -> np.ndarray:
        """As :meth:`of`, with ``-1`` for ids outside the data (e.g. an audit's crafted canaries)."""
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self.codes))
        out = np.full(len(ids), -1, dtype=np.int64)
        out[ok] = self.codes[ids[ok]]
        return out


@dataclass(frozen=True)
class GroundTruth:
    """What was true. Only scoring (``bench.metrics``) sees this.

    Attributes:
        candidate_is_member: aligned with ``Federation.candidates``.
        candidate_site: index of the hospital that holds each candidate (members and
            non-members alike: a non-member is held out *from* that hospital).
        site_train: the member records of each hospital, by name (for inversion scoring).
    """

    candidate_ids: np.ndarray
    candidate_is_member: np.ndarray
    candidate_site: np.ndarray
    site_names: tuple[str, ...]
    site_train: Mapping[str, Records]
    canary_ids: Optional[np.ndarray] = None  # aligned with Federation.canaries
    canary_included: Optional[np.ndarray] = None  # which canaries were inserted into training
    info: Optional[DatasetInfo] = None  # feature metadata, to decode tabular reconstructions
    population: Optional[Records] = None  # held-out records whose marginals give the inversion prior baseline
    sensitive: tuple[SensitiveAttribute, ...] = ()  # fairness.attributes' subgroups (bench.fairness)
    candidates: Optional[Records] = None  # the candidates' records, aligned with candidate_ids (attribute inference's truth)


# --------------------------------------------------------------------------- audit canaries


@dataclass(frozen=True)
class CanaryDirections:
    """Unit directions in the flat parameter space, one per canary: what the auditor crafted.

    Both kinds are rows of an orthogonal matrix, so no canary leaks into another's
    projection (with independent random vectors, the cross-talk of the m/2 included
    canaries over hundreds of steps would swamp the signal):

    * ``dirac``: canary i is the basis vector of coordinate ``coordinates[i]``;
    * ``random``: canary i is cosine basis vector ``coordinates[i]`` under random sign flips
      ``signs`` — a row of the random orthogonal matrix C·diag(signs) (C the orthonormal
      DCT-II), i.e. a Dirac canary in a randomly rotated basis: spread evenly over every
      parameter, O(P log P) to apply. Dirac canaries that land on a high-curvature
      parameter (an output weight, a bias) are partly undone by the records' own
      gradients; spread-out directions are not (measured in docs/bench-audit.md).

    Attributes:
        ids: canary ids, aligned with ``GroundTruth.canary_ids``.
        kind: ``"dirac"`` or ``"random"``.
        num_params: dimension P of the flat parameter space.
        coordinates: distinct indices in [0, P), shape (m,).
        signs: ``random`` only, ±1 per parameter, shape (P,).
    """

    ids: np.ndarray
    kind: Literal["dirac", "random"]
    num_params: int
    coordinates: np.ndarray
    signs: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """The unit vectors of canaries ``index`` as dense float32 rows, shape (len(index), P)."""
        import torch

        index = np.asarray(index, dtype=np.int64)
        p = self.num_params
        if self.kind == "dirac":
            out = torch.zeros(len(index), p)
            out[torch.arange(len(index)), torch.as_tensor(self.coordinates[index])] = 1.0
            return out
        # row k of the orthonormal DCT-II matrix, s_k·cos(π·k·(2n+1)/(2P)), times the signs; the
        # angle is reduced mod 4P in integers first so that float32 holds it exactly
        k = self.coordinates[index]
        norm = np.where(k == 0, np.sqrt(1.0 / p), np.sqrt(2.0 / p)).astype(np.float32)
        odd = 2 * np.arange(p, dtype=np.int64) + 1
        signs = torch.from_numpy(self.signs.astype(np.float32))
        out = torch.empty(len(index), p)
        for start in range(0, len(index), 256):
            ang = (k[start : start + 256, None] * odd[None, :]) % (4 * p)
            block = torch.cos(torch.from_numpy(ang).to(torch.float32) * (np.pi / (2 * p)))
            out[start : start + 256] = block * torch.from_numpy(norm[start : start + 256, None]) * signs
        return out

    def project(self, v: torch.Tensor) -> np.ndarray:
        """⟨v, dᵢ⟩ for every canary i, shape (m,)."""
        import torch

        v = v.detach().reshape(-1).to(torch.float64).numpy()
        if self.kind == "random":
            from scipy.fft import dct

            v = dct(v * self.signs, type=2, norm="ortho")
        return v[self.coordinates]

    def project_many(self, rows: torch.Tensor) -> np.ndarray:
        """⟨v_s, dᵢ⟩ for every row v_s of ``rows`` (S, P) and every canary i, shape (S, m)."""
        import torch

        v = rows.detach().reshape(rows.shape[0], -1).to(torch.float64).numpy()
        if self.kind == "random":
            from scipy.fft import dct

            v = dct(v * self.signs[None, :], type=2, norm="ortho", axis=1)
        return v[:, self.coordinates]


@dataclass(frozen=True)
class InsertedCanaries:
    """Canaries a mechanism must insert for a white-box audit; lives in the
    :class:`Federation` (never in a view: ``included`` is ground truth).

    ``kind="gradient"``: inside hospital ``site``'s DP-SGD every included canary is a
    per-sample gradient ``scale·C·dᵢ`` (C = dp_sgd's clip) that joins each step with the
    same Poisson rate q as a record (and is clipped like one). ``kind="client"``: every
    included canary is a client whose update is ``scale·dᵢ`` in every round (``scale`` =
    client_dp's clip C: norm exactly C).
    """

    kind: Literal["gradient", "client"]
    directions: CanaryDirections
    included: np.ndarray
    site: Optional[str] = None
    scale: float = 1.0
    seed: int = 0
    clip: Optional[float] = None  # gradient canaries: the clip C they were crafted against (public: dp_sgd's config)

    def included_index(self) -> np.ndarray:
        return np.flatnonzero(self.included)


# --------------------------------------------------------------------------- mechanisms


@dataclass(frozen=True)
class DPEvent:
    """One composition block of a DP mechanism (dp-accounting style, immutable).

    ``kind="poisson_gaussian"``: ``steps`` applications of the Gaussian mechanism with noise
    multiplier ``noise_multiplier`` on a Poisson subsample of rate ``sample_rate``.

    Attributes:
        unit: ``"record"`` (DP-SGD inside a hospital) or ``"client"`` (client-level DP).
        party: whose privacy it is (a hospital name for record-level DP, ``"federation"``
            for client-level DP).
        population: n for the default δ = min(1e-5, 1/(100·n)) and the weak-guarantee check
            δ ≥ 1/n (records of the hospital, or hospitals).
        neighbouring: the relation the ε is stated under. ``"add_remove"``: neighbouring
            datasets differ by one unit present or absent (sensitivity C; Opacus's
            accountants). ``"replace_one"``: one unit's data replaced by any other
            (sensitivity 2C); only for client-level events with ``sample_rate == 1``.
    """

    kind: Literal["poisson_gaussian"]
    unit: Literal["record", "client"]
    party: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    population: int
    source: str = ""
    neighbouring: Literal["add_remove", "replace_one"] = "add_remove"


@dataclass(frozen=True)
class LocalResult:
    """What one hospital's local training produced in one round."""

    params: torch.Tensor
    num_steps: int
    num_samples: int
    mean_loss: float
    # (steps, P) privatized gradients of every local step, logged only by a hospital whose
    # DP-SGD a white-box audit instruments (the release the accountant's threat model assumes)
    step_updates: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Disclosure:
    """What the FL protocol tells the server about a hospital's local training."""

    num_samples: int
    local_epochs: int
    local_steps: int
    batch_size: int
    lr: float
    optimizer: str
    labels_known: bool = False


@dataclass(frozen=True)
class RoundRecord:
    """One FedAvg round as it happened.

    ``updates`` are the vectors each hospital sent (after client-side defenses). When a
    defense hides individual updates (secure aggregation), ``updates_hidden`` is True and
    only ``aggregate`` may reach the server's view. ``aggregate`` is the weighted sum the
    server computed *before* its own hooks (e.g. client_dp's central noise): the server
    adds that noise itself, so a curious server knows the clean sum.
    """

    round: int
    global_params: torch.Tensor
    participants: tuple[str, ...]
    weights: Mapping[str, float]
    updates: Mapping[str, torch.Tensor]
    updates_hidden: bool
    aggregate: torch.Tensor
    disclosures: Mapping[str, Disclosure]
    utility: Mapping[str, float]
    seconds: float
    aggregation_seconds: float
    bytes_per_client: float
    step_updates: Mapping[str, torch.Tensor] = field(default_factory=dict)  # LocalResult.step_updates per hospital
    # a malicious server's round (ServerPlan): the parameters it sent each hospital, when they
    # differ from ``global_params``; and why the hospitals refused to train (a client-side check)
    sent: Mapping[str, torch.Tensor] = field(default_factory=dict)
    aborted: Optional[str] = None


@dataclass(frozen=True)
class TrainingRecord:
    """The whole federated run: the global model of each round and what each party sent."""

    rounds: tuple[RoundRecord, ...]
    final_params: torch.Tensor
    dp_events: tuple[DPEvent, ...]
    seconds: float
    tags: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- malicious server

#: what a malicious server may do to the protocol (DESIGN.md: an adversary is a party and a behaviour)
MALICIOUS_CAPABILITIES: tuple[str, ...] = (
    "send_different_models", "alter_parameters", "change_architecture", "withhold_noise", "claim_dropouts",
)


@dataclass(frozen=True)
class PlanInputs:
    """What a malicious server knows when it plans its behaviour, before training: the public
    protocol (architecture, roster, sizes, rounds) and population data of the same
    distribution (what an outsider has too). Never ground truth.
    """

    info: DatasetInfo
    model_fn: ModelFactory
    initial_params: torch.Tensor
    site_names: tuple[str, ...]
    site_sizes: Mapping[str, int]
    rounds: int
    population: Records


@dataclass(frozen=True)
class ServerPlan:
    """What a malicious server does to the protocol, declared by its attack before training
    and applied by ``bench.federated.run_federated`` through the federation's own hooks.

    Attributes:
        capabilities: what it does, a subset of :data:`MALICIOUS_CAPABILITIES` (logged).
        send: ``(round, site, global_params) -> params`` it sends that hospital (None: the
            global model to everyone, as an honest server).
        model_fn: the architecture it sends every hospital (None: the configured one).
        initial: maps the configured model's initial parameters to ``model_fn``'s.
        withhold_noise: the server skips the noise of its own hooks (``transform_aggregate``,
            e.g. client_dp's central noise); the mechanism's bookkeeping still runs, so the
            claimed ε is what the hospitals were promised, not what holds.
        adversary: the party and behaviour, logged as the tag ``adversary``.
    """

    capabilities: tuple[str, ...]
    send: Optional[Callable[[int, str, "torch.Tensor"], "torch.Tensor"]] = None
    model_fn: Optional[ModelFactory] = None
    initial: Optional[Callable[["torch.Tensor"], "torch.Tensor"]] = None
    withhold_noise: bool = False
    adversary: str = "malicious_server"


# --------------------------------------------------------------------------- views


ModelFactory = Callable[[], "torch.nn.Module"]


@dataclass(frozen=True)
class ServerRound:
    """What the honest-but-curious server saw in one round.

    ``updates`` is ``None`` when secure aggregation hid the individual updates.
    """

    round: int
    global_params: torch.Tensor
    participants: tuple[str, ...]
    updates: Optional[Mapping[str, torch.Tensor]]
    aggregate: torch.Tensor
    disclosures: Mapping[str, Disclosure]
    # every privatized local step of an audited hospital (white-box audits only): what a
    # server that sees each step, or the hospital's own logging, observes
    step_updates: Optional[Mapping[str, torch.Tensor]] = None
    # a malicious server knows what it sent to whom, and its aggregation weights; ``aborted``:
    # the hospitals refused the round (client-side checks), so nothing came back
    sent: Optional[Mapping[str, torch.Tensor]] = None
    weights: Optional[Mapping[str, float]] = None
    aborted: Optional[str] = None


@dataclass(frozen=True)
class ServerView:
    """Threat model ``server``: the models it sent and the updates it received.

    ``known_records`` are records the server asks about (membership or source inference);
    the server does not learn which of them are members.
    """

    info: DatasetInfo
    model_fn: ModelFactory
    rounds: tuple[ServerRound, ...]
    site_names: tuple[str, ...]
    known_records: Records
    updates_hidden: bool
    final_params: Optional[torch.Tensor] = None  # the released model after the last round
    canary_directions: Optional[CanaryDirections] = None  # what a white-box auditor crafted
    canary_site: Optional[str] = None  # gradient canaries: the hospital whose DP-SGD they entered
    canary_clip: Optional[float] = None  # gradient canaries: the per-sample clip C they were crafted against
    adversary: str = "honest_but_curious"  # or "malicious_server" (a ServerPlan acted on the protocol)


@dataclass(frozen=True)
class OutsiderView:
    """Threat model ``outsider``: query access to the released model plus population data.

    ``simulate`` trains a federation with the same pipeline (model, defenses, FL settings,
    per-hospital sizes) on data the attacker chooses: the public protocol, which reference
    models (LiRA, RMIA) need. It returns final flat parameters.
    """

    info: DatasetInfo
    model_fn: ModelFactory
    final_params: torch.Tensor
    candidates: Records
    population: Records
    site_sizes: Mapping[str, int]
    simulate: Optional[Callable[..., torch.Tensor]] = None
    reference_signals: Optional[Callable[[int], "ReferenceSignals"]] = None  # memoised per cell
    canaries: Optional[Records] = None  # audit canaries the auditor crafted (inclusion unknown)


@dataclass(frozen=True)
class PeerView:
    """Threat model ``peer``: a hospital that follows the protocol but attacks the others.

    It receives the global model every round and the released one, and holds its own data
    and the updates it sent; it sees no other hospital's update. ``candidates`` are the
    records it asks about, without its own training records (it knows those are members);
    ``own_holdout`` are its own records that never entered training (its test split): known
    non-members, the population reference a peer really has.
    """

    info: DatasetInfo
    model_fn: ModelFactory
    site: str
    received: tuple[torch.Tensor, ...]  # the parameters it was sent at the start of each round (1..R)
    final_params: torch.Tensor  # the released model after the last round
    own_records: Records
    own_holdout: Records
    own_updates: tuple[Optional[torch.Tensor], ...]  # what it sent each round (None: not selected)
    candidates: Records
    site_sizes: Mapping[str, int]


@dataclass(frozen=True)
class ReferenceSignals:
    """Per-record signals of K reference federations (LiRA, RMIA): the models are not kept.

    Attributes:
        ids: the records scored (``OutsiderView.population`` = the candidates), shape (N,).
        target: logit-scaled confidence φ = log(p_y / (1 − p_y)) of the released model, (N,).
        reference: φ of each reference model on each record, shape (K, N).
        included: whether reference k trained on record n, shape (K, N) bool.
        seconds: wall time spent training the references.
        method: ``"vectorized"`` or ``"sequential"`` (and why, for the logs).
    """

    ids: np.ndarray
    target: np.ndarray
    reference: np.ndarray
    included: np.ndarray
    seconds: float
    method: str


# --------------------------------------------------------------------------- attack outputs


@dataclass(frozen=True)
class MembershipScores:
    """Higher score = more likely a member. ``ids`` index ``GroundTruth.candidate_ids``."""

    ids: np.ndarray
    scores: np.ndarray
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditScores:
    """A white-box auditor's scores of its canaries (higher = more likely inserted), one
    score vector per observation (e.g. ``all_rounds``: every update of the audited party;
    ``final_model``: the released model only).

    Attributes:
        ids: canary ids, aligned with ``GroundTruth.canary_ids``.
        observations: observation name -> scores aligned with ``ids``.
        unit: the privacy unit audited (``"record"`` or ``"client"``).
        party: whose guarantee is audited (a hospital for record-level DP, ``"federation"``
            for client-level DP, ``None`` for the weakest party: black-box canaries sit in
            every hospital).
        p_value: confidence level of the certified bounds is 1 − p_value.
        guess_counts: ``(k_pos, k_neg)`` guessing rules declared before seeing the scores
            (``None``: the default rules of ``bench.metrics.audit``). The first observation
            is the audit's headline.
    """

    ids: np.ndarray
    observations: Mapping[str, np.ndarray]
    unit: Literal["record", "client"]
    party: Optional[str]
    p_value: float = 0.05
    guess_counts: Optional[tuple[tuple[int, int], ...]] = None
    # observations scored step by step with a likelihood-ratio statistic
    # (``bench.metrics.audit.step_llr_scores``): not Gaussian-shaped, so no Gaussian-fit
    # estimate, and their ceiling simulates every step
    step_observations: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttributeGuesses:
    """What an attribute inference attack believes about one sensitive attribute of each record.

    The attribute's value is decoded from the record's own features by scoring only
    (``bench.metrics.attribute``); the attack states how: the feature it targets and, for a
    continuous feature, the cut points of its bands.

    Attributes:
        ids: candidate ids, aligned with the rows of the score arrays.
        attribute: the feature's name (``DatasetInfo.features``), e.g. ``"sex"``.
        groups: the candidate values (categories, or band labels such as ``under_55``).
        bands: cut points on the raw scale for a continuous feature; empty for a categorical one.
        attack: (n, V) scores of each candidate value from the target model (higher = more likely).
        imputation: (n, V) scores of the baseline that never queried the model: an imputation
            model fit on the adversary's auxiliary data (Jayaraman and Evans, 2022).
        answered: (n,) False where the attack said "don't know" (SACRO-ML's rule).
    """

    ids: np.ndarray
    attribute: str
    groups: tuple[str, ...]
    bands: tuple[float, ...]
    attack: np.ndarray
    imputation: np.ndarray
    answered: np.ndarray
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributeInferences:
    """An attribute inference attack's output: one :class:`AttributeGuesses` per attribute."""

    items: tuple[AttributeGuesses, ...]
    adversary: str = "outsider"


@dataclass(frozen=True)
class SourceGuesses:
    """For each record id, the index of the hospital the attacker believes holds it."""

    ids: np.ndarray
    site_index: np.ndarray


@dataclass(frozen=True)
class Reconstruction:
    """Records rebuilt from what the server saw, for one (round, hospital) target.

    ``x`` has shape ``(k, *input_shape)``; ``labels`` may be ``None`` if not recovered.
    ``target`` names the attacked hospital (or ``"aggregate"`` under secure aggregation).
    """

    round: int
    target: str
    x: torch.Tensor
    labels: Optional[torch.Tensor]
    objective: float
    sites: tuple[str, ...] = ()  # whose records it rebuilds (all participants under secure aggregation)
    restarts: Optional[torch.Tensor] = None  # every restart, (R, k, *input_shape): scoring's oracle upper bound


@dataclass(frozen=True)
class Reconstructions:
    """All (round, hospital) targets of one inversion attack, and what it assumed.

    Attributes:
        items: one :class:`Reconstruction` per attacked (round, target).
        disclosure: the protocol disclosure the attack used (logged, with its provenance).
        iterations: optimisation steps per restart (0 for analytic attacks).
        seconds: wall time of the optimisation.
        write_records: the user opted in to writing reconstructed records to a CSV artifact.
        membership: a membership follow-up on the same observation (a malicious server's
            ``model_inconsistency`` scores the candidates against the update it isolated);
            ``None`` for a pure inversion.
        membership_site: the hospital whose training set ``membership`` asks about (scoring
            compares its members with the non-members held out from it).
    """

    items: tuple[Reconstruction, ...]
    disclosure: Mapping[str, Any] = field(default_factory=dict)
    iterations: int = 0
    seconds: float = 0.0
    write_records: bool = False
    membership: Optional[MembershipScores] = None
    membership_site: Optional[str] = None
