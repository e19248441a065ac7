"""Personas: customers clustered on their behaviour, each cluster named from its profile.

The model is one Pipeline: missing values filled by meaning (no order yet = 730 days since the
last one; no e-mails or visits = rate and count 0), a Yeo-Johnson power transform that also
standardises (spend and counts are heavily skewed), then K-Means. The number of personas is the
one with the best silhouette between MIN_PERSONAS and `SEGFLOW_PERSONA_MAX_COUNT` among those
whose smallest cluster holds at least `SEGFLOW_PERSONA_MIN_SHARE` of the customers (with none
qualifying, the count whose smallest cluster is largest). Fewer than three personas would not
be worth an audience each.

Naming. A cluster's profile is the mean of its customers' standardised features (so 0 is the
population average and 1 is one standard deviation above it), plus `single_order`, the
standardised share of customers with exactly one order. Each name has a rule, a weighted sum of
profile values whose weights add up to 1 in absolute value, so the scores are comparable:

| persona | rule (weights) |
|---|---|
| Loyal high spenders | monetary .4, avg_order_value .2, frequency .2, recency_days -.2 |
| Regular buyers | orders_90d .4, recency_days -.4, monetary -.2 |
| New customers | days_since_signup -1 |
| Engaged browsers | web_sessions_30d .35, product_views_30d .35, frequency -.3 |
| Email enthusiasts | email_open_rate_90d .4, email_click_rate_90d .4, frequency -.2 |
| Bargain hunters | avg_order_value -.5, frequency .5 |
| Lapsing customers | spend_trend -.5, recency_days .25, frequency .25 |
| Dormant | recency_days .5, email_open_rate_90d -.25, web_sessions_30d -.25 |
| One-time buyers | single_order .7, recency_days .3 |

Names are handed out greedily: the (cluster, name) pair with the highest score first, then the
next pair whose cluster and name are both still free, and so on (ties: catalogue order, then
cluster label). Every cluster gets the best-matching name still free, one that fits nothing
well the closest one left, and no two clusters share a name. The rules read only the profile,
so the same behaviour gets the same name after a retrain whatever label K-Means gives it; how
much the assignments themselves move is measured with the adjusted Rand index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PowerTransformer

from ml.models.catalogue import PERSONA_NAMES
from ml.models.sampling import sample_rows

NEVER_ORDERED_RECENCY_DAYS = 730
"""An integer, like the fill of the activity columns: when every customer has ordered, the
recency column arrives as integers, and an imputer refuses to fill integers with a float."""
PERSONA_FEATURES = [
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "orders_90d",
    "spend_trend",
    "days_since_signup",
    "email_open_rate_90d",
    "email_click_rate_90d",
    "web_sessions_30d",
    "product_views_30d",
]
MIN_PERSONAS = 3
FIT_ROWS = 20_000
"""K-Means and the transform are fitted on at most this many customers (a fixed sample): more
rows hardly move the centres of a handful of clusters, and this keeps the search fast."""
SILHOUETTE_SAMPLE = 4000
RANDOM_STATE = 7
N_INIT = 4

NAMING_RULES: dict[str, dict[str, float]] = {
    "Loyal high spenders": {
        "monetary": 0.4,
        "avg_order_value": 0.2,
        "frequency": 0.2,
        "recency_days": -0.2,
    },
    "Regular buyers": {"orders_90d": 0.4, "recency_days": -0.4, "monetary": -0.2},
    "New customers": {"days_since_signup": -1.0},
    "Engaged browsers": {"web_sessions_30d": 0.35, "product_views_30d": 0.35, "frequency": -0.3},
    "Email enthusiasts": {
        "email_open_rate_90d": 0.4,
        "email_click_rate_90d": 0.4,
        "frequency": -0.2,
    },
    "Bargain hunters": {"avg_order_value": -0.5, "frequency": 0.5},
    "Lapsing customers": {"spend_trend": -0.5, "recency_days": 0.25, "frequency": 0.25},
    "Dormant": {"recency_days": 0.5, "email_open_rate_90d": -0.25, "web_sessions_30d": -0.25},
    "One-time buyers": {"single_order": 0.7, "recency_days": 0.3},
}


@dataclass(frozen=True)
class PersonaModel:
    model: Pipeline
    names: dict[int, str]
    descriptions: dict[int, str]
    profile: pd.DataFrame
    """Per cluster label: standardised feature means and `share` of the fitted customers."""
    silhouette_by_count: dict[int, float]
    min_share_by_count: dict[int, float]


def persona_pipeline(n_personas: int) -> Pipeline:
    others = PERSONA_FEATURES[1:]
    prepare = ColumnTransformer(
        [
            (
                "recency",
                SimpleImputer(strategy="constant", fill_value=NEVER_ORDERED_RECENCY_DAYS),
                ["recency_days"],
            ),
            (
                "activity",
                SimpleImputer(strategy="constant", fill_value=0, keep_empty_features=True),
                others,
            ),
        ]
    )
    return Pipeline(
        [
            ("prepare", prepare),
            ("scale", PowerTransformer(method="yeo-johnson", standardize=True)),
            ("cluster", KMeans(n_clusters=n_personas, n_init=N_INIT, random_state=RANDOM_STATE)),
        ]
    )


def embed(model: Pipeline, frame: pd.DataFrame) -> np.ndarray:
    """Customers in the model's standardised space (where clusters and silhouettes live)."""
    return model[:-1].transform(frame[PERSONA_FEATURES])


def profile(model: Pipeline, frame: pd.DataFrame) -> pd.DataFrame:
    """Per cluster label: the mean standardised features, `single_order` and `share`."""
    space = pd.DataFrame(embed(model, frame), columns=PERSONA_FEATURES)
    labels = model[-1].predict(space.to_numpy())
    single = (pd.to_numeric(frame["frequency"]).to_numpy() == 1).astype(float)
    spread = single.std() or 1.0
    space["single_order"] = (single - single.mean()) / spread
    table = space.groupby(labels).mean()
    table["share"] = pd.Series(labels).value_counts(normalize=True).sort_index()
    # Every label the model has, even one no customer of this frame falls into.
    return table.reindex(range(model[-1].n_clusters)).fillna({"share": 0.0}).fillna(0.0)


def name_personas(profile_table: pd.DataFrame) -> dict[int, str]:
    """Cluster label -> persona name, by the rules in the module docstring."""
    order = list(PERSONA_NAMES)
    pairs = []
    for label, values in profile_table.iterrows():
        for name, weights in NAMING_RULES.items():
            score = sum(weight * float(values[column]) for column, weight in weights.items())
            pairs.append((-score, order.index(name), int(label), name))
    names: dict[int, str] = {}
    for _, _, label, name in sorted(pairs):
        if label not in names and name not in names.values():
            names[label] = name
    return names


def describe(names: dict[int, str], model: Pipeline, frame: pd.DataFrame) -> dict[int, str]:
    """The catalogue description with the cluster's typical numbers (medians, shares)."""
    labels = model.predict(frame[PERSONA_FEATURES])
    numbers = frame.assign(_label=labels).groupby("_label")
    texts = {}
    for label, name in names.items():
        if label not in numbers.groups:
            texts[label] = PERSONA_NAMES[name]
            continue
        group = numbers.get_group(label)
        recency = pd.to_numeric(group["recency_days"]).median()
        open_rate = pd.to_numeric(group["email_open_rate_90d"]).mean()
        orders = pd.to_numeric(group["frequency"]).median()
        facts = [
            f"{len(group) / len(frame):.0%} of customers",
            f"typically {orders:.0f} order{'' if round(orders) == 1 else 's'}",
            "no order yet" if pd.isna(recency) else f"the last {recency:.0f} days ago",
            f"{pd.to_numeric(group['monetary']).median():,.0f} spent",
        ]
        if not pd.isna(open_rate):
            facts.append(f"opens {open_rate:.0%} of e-mails")
        texts[label] = f"{PERSONA_NAMES[name]} {'; '.join(facts)}."
    return texts


def fit_personas(frame: pd.DataFrame, min_share: float, max_count: int) -> PersonaModel:
    """Choose the number of personas, fit, and name them."""
    data = frame[PERSONA_FEATURES].iloc[sample_rows(len(frame), FIT_ROWS)]
    counts = range(MIN_PERSONAS, max(max_count, MIN_PERSONAS) + 1)
    # The transform does not depend on the count: fit it once, cluster the same space.
    space = persona_pipeline(MIN_PERSONAS)[:-1].fit_transform(data)
    sample = sample_rows(len(space), SILHOUETTE_SAMPLE)
    silhouettes, min_shares = {}, {}
    for count in counts:
        labels = KMeans(count, n_init=N_INIT, random_state=RANDOM_STATE).fit_predict(space)
        silhouettes[count] = float(silhouette_score(space[sample], labels[sample]))
        min_shares[count] = float(np.bincount(labels, minlength=count).min() / len(labels))
    allowed = [count for count in counts if min_shares[count] >= min_share]
    chosen = (
        max(allowed, key=lambda count: (silhouettes[count], -count))
        if allowed
        else max(counts, key=lambda count: min_shares[count])
    )
    model = persona_pipeline(chosen).fit(data)
    table = profile(model, frame)
    names = name_personas(table)
    return PersonaModel(
        model=model,
        names=names,
        descriptions=describe(names, model, frame),
        profile=table,
        silhouette_by_count=silhouettes,
        min_share_by_count=min_shares,
    )
