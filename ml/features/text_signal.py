"""The review text signal: how positive each review's text reads, as a probability.

Chosen: TF-IDF of word unigrams and bigrams with a logistic regression, trained on the shop's
own reviews, using the star rating as the label (4-5 positive, 1-2 negative; 3 is left out of
training). It needs no external lexicon or model download, adapts to the shop's language and
vocabulary, and a review's text can disagree with its rating ("five stars, but late delivery").
Every review gets a score once, from a model trained only on reviews written before the run's
cutoff, and keeps it; dbt averages the scores per customer as of each date
(`avg_review_sentiment`). With too few labelled reviews to learn from, reviews stay unscored
and the feature is null.
"""

from __future__ import annotations

import datetime as dt
import logging

from ml.config import Settings
from ml.contract import as_of_cutoff
from ml.warehouse import tables
from ml.warehouse.connection import connect

log = logging.getLogger(__name__)

MIN_REVIEWS_PER_CLASS = 20


def score_review_sentiment(settings: Settings, as_of: dt.date) -> int:
    """Score the reviews written before the day after `as_of` that have no score yet."""
    import numpy as np
    import pyarrow as pa
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    cutoff = as_of_cutoff(as_of)
    with connect(settings) as con:
        tables.ensure(con, tables.REVIEW_SENTIMENT)
        known = con.execute(
            """SELECT text, rating >= 4 FROM raw.reviews
               WHERE created_at < ? AND text IS NOT NULL AND rating <> 3 ORDER BY review_id""",
            [cutoff],
        ).fetchall()
        pending = con.execute(
            """SELECT r.review_id, r.text FROM raw.reviews r
               LEFT JOIN derived.review_sentiment s USING (review_id)
               WHERE r.created_at < ? AND r.text IS NOT NULL AND s.review_id IS NULL
               ORDER BY r.review_id""",
            [cutoff],
        ).fetchall()
        labels = np.array([positive for _, positive in known], dtype=bool)
        if not pending:
            return 0
        if min(labels.sum(), (~labels).sum()) < MIN_REVIEWS_PER_CLASS:
            log.warning(
                "review sentiment: %d positive and %d negative rated reviews before %s; "
                "at least %d of each are needed, so %d reviews stay unscored",
                labels.sum(),
                (~labels).sum(),
                cutoff,
                MIN_REVIEWS_PER_CLASS,
                len(pending),
            )
            return 0
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            LogisticRegression(max_iter=1000, class_weight="balanced"),
        )
        model.fit([text for text, _ in known], labels)
        scores = model.predict_proba([text for _, text in pending])[:, 1]
        scored = pa.table(  # noqa: F841  (read by name in the SQL below)
            {
                "review_id": [review_id for review_id, _ in pending],
                "positive_probability": scores.round(6),
                "trained_on_reviews_before": [cutoff] * len(pending),
            }
        )
        con.execute("INSERT INTO derived.review_sentiment SELECT * FROM scored")
    log.info("review sentiment: scored %d new reviews (trained on %d)", len(pending), len(known))
    return len(pending)
