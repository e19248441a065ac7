"""The model catalogue: every model segflow trains, and the facts about it that the rest of
segflow reads (training, evaluation, the registry, scoring, publishing, the quality suites, the
drift monitor and the DAGs). A model is added or changed here, nowhere else.

| model | target | rows | baseline (no learning) | gate metric |
|---|---|---|---|---|
| personas | - | all | the RFM segments as clusters | silhouette |
| purchase_propensity | purchased | all | RFM score (no purchase yet = 0) | roc_auc |
| churn_risk | churned | active (an order in the past year) | days since the last order | roc_auc |
| engagement_propensity | clicked_email | all | 90-day click rate (none = 0) | roc_auc |
| customer_value | revenue_in_horizon | all | 90-day spend as a run rate over the horizon | spearman |

Targets are columns of `marts.training_labels` (the label horizon after each snapshot). The
gate metric is the one promotion compares: ranking quality for the classifiers (ROC-AUC does
not depend on the base rate, which moves between snapshots), the rank correlation for customer
value (audiences take the top of the ranking; revenue is too skewed for an error in money to
rank models fairly), and the silhouette for personas, measured in the challenger's feature space
so that two models and the RFM segments are judged on the same ground.

Plain data only: the DAG files and the quality suites import this module, so it imports
nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

PROPENSITY_METRICS = ("roc_auc", "lift_top_decile", "brier", "mean_probability", "positive_rate")
"""What the drift monitor computes on a probability's matured outcomes: ranking, then
calibration (the mean predicted probability against the observed rate)."""
VALUE_METRICS = ("spearman", "mae", "mean_predicted", "mean_actual")
"""What the drift monitor computes on predicted revenue's matured outcomes."""


@dataclass(frozen=True)
class Model:
    kind: str
    """The name segflow knows the model by: DAG params, the registry, version columns."""
    output_column: str
    """The column of customer_segments that holds its output."""
    gate_metric: str
    """The metric promotion compares (ml.models.evaluate computes it)."""
    baseline: str
    """The score that needs no learning it must beat, in words (model cards, promotion)."""
    target: str | None = None
    """The training_labels column a supervised model learns; None for clustering."""
    probability: bool = False
    """Its output is a probability in [0, 1], published with a band (high, medium, low)."""
    active_only: bool = False
    """It learns from, is judged on and scores active customers only (a completed order in the
    365 days before the date); for the others its output is null."""
    outcomes: tuple[str, str] | None = None
    """A supervised model's two outcomes in words, e.g. ("bought", "did not buy")."""
    realized_metrics: tuple[str, ...] = ()
    """What the drift monitor computes once the model's predictions have matured."""

    @property
    def registered_name(self) -> str:
        """Its name in the MLflow model registry."""
        return f"segflow_{self.kind}"

    @property
    def version_column(self) -> str:
        """The customer_segments column naming the version behind each output."""
        return f"{self.kind}_model_version"

    @property
    def band_column(self) -> str | None:
        return f"{self.output_column}_band" if self.probability else None

    @property
    def supervised(self) -> bool:
        return self.target is not None

    @property
    def population(self) -> str:
        """Who its rows are, in words."""
        return "active customers" if self.active_only else "customers"


PERSONAS = Model(
    kind="personas",
    output_column="segment",
    gate_metric="silhouette",
    baseline="the RFM segments (rfm_segment) taken as clusters",
)
PERSONA_NAMES: dict[str, str] = {
    "Loyal high spenders": "Buy often, recently and for the most money.",
    "Regular buyers": "Buy steadily; ordered recently and several times this quarter.",
    "New customers": "Signed up recently; still finding their way around the shop.",
    "Engaged browsers": "Visit and look at products a lot, but rarely buy.",
    "Email enthusiasts": "Open and click the shop's e-mails far more than most.",
    "Bargain hunters": "Order often, but small baskets: sales and offers bring them in.",
    "Lapsing customers": "Used to buy regularly; their spending is falling off.",
    "Dormant": "No order for a long time and hardly any opens or visits.",
    "One-time buyers": "Ordered once and have not come back.",
}
"""The names a persona can get, in the order naming prefers them, with what each means
(ml/segments/personas.py names each cluster from its profile)."""

PURCHASE_PROPENSITY = Model(
    kind="purchase_propensity",
    output_column="purchase_propensity",
    gate_metric="roc_auc",
    baseline="RFM score, customers without a purchase lowest",
    target="purchased",
    probability=True,
    outcomes=("bought", "did not buy"),
    realized_metrics=PROPENSITY_METRICS,
)
CHURN_RISK = Model(
    kind="churn_risk",
    output_column="churn_risk",
    gate_metric="roc_auc",
    baseline="days since the last order",
    target="churned",
    probability=True,
    active_only=True,
    outcomes=("stopped buying", "bought again"),
    realized_metrics=PROPENSITY_METRICS,
)
ENGAGEMENT_PROPENSITY = Model(
    kind="engagement_propensity",
    output_column="engagement_propensity",
    gate_metric="roc_auc",
    baseline="e-mail click rate over 90 days, none = 0",
    target="clicked_email",
    probability=True,
    outcomes=("clicked an e-mail", "clicked none"),
    realized_metrics=PROPENSITY_METRICS,
)
CUSTOMER_VALUE = Model(
    kind="customer_value",
    output_column="predicted_clv",
    gate_metric="spearman",
    baseline="spend of the last 90 days as a run rate over the horizon",
    target="revenue_in_horizon",
    outcomes=("spent", "spent nothing"),
    realized_metrics=VALUE_METRICS,
)

MODELS: tuple[Model, ...] = (
    PERSONAS,
    PURCHASE_PROPENSITY,
    CHURN_RISK,
    ENGAGEMENT_PROPENSITY,
    CUSTOMER_VALUE,
)
"""Every model, in the order segflow trains, scores and lists them."""
MODEL_KINDS: tuple[str, ...] = tuple(m.kind for m in MODELS)
SCORES: tuple[Model, ...] = tuple(m for m in MODELS if m.supervised)
"""The models whose output is a number (a score column of customer_segments)."""
PROBABILITIES: tuple[Model, ...] = tuple(m for m in MODELS if m.probability)

_BY_KIND = {m.kind: m for m in MODELS}


def model(kind: str) -> Model:
    """The model of `kind`; ValueError for a kind segflow does not have."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(
            f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}"
        ) from None
