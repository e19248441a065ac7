-- The customer features of the dbt mart (marts.customer_features) from the raw tables in one
-- query: the benchmark's floor (bench/feature_baselines.py reads this file and binds the
-- parameters by name).
--
--   $as_of        DATE       the as-of date
--   $cutoff       TIMESTAMP  the start of the day after it: only rows before it count
--   $since_30d, $since_90d, $since_180d, $since_365d
--                 TIMESTAMP  the cutoff minus that many days, where each window starts
--   $valid_email  VARCHAR    the mart's address pattern
--
-- A "most frequent" value is arg_min(value, (-rows, value)): the most rows, ties to the
-- smallest value, as in the mart.

WITH known_customers AS (
    SELECT customer_id, signup_at, country, birth_year, acquisition_channel, email, email_opt_in
    FROM raw.customers
    WHERE signup_at < $cutoff
),

completed_orders AS (
    SELECT customer_id, ordered_at, amount, lower(category) AS category
    FROM raw.orders
    -- The contract: an order without a status is completed.
    WHERE coalesce(status, 'completed') = 'completed' AND ordered_at < $cutoff
),

order_totals AS (
    SELECT
        customer_id,
        count(*) AS frequency,
        sum(amount) AS monetary,
        min(ordered_at) AS first_order_at,
        max(ordered_at) AS last_order_at,
        date_diff('day', max(ordered_at)::DATE, $as_of) AS recency_days,
        count(*) FILTER (WHERE ordered_at >= $since_30d) AS orders_30d,
        count(*) FILTER (WHERE ordered_at >= $since_90d) AS orders_90d,
        count(*) FILTER (WHERE ordered_at >= $since_365d) AS orders_365d,
        coalesce(sum(amount) FILTER (WHERE ordered_at >= $since_90d), 0) AS spend_90d,
        coalesce(
            sum(amount) FILTER (WHERE ordered_at >= $since_180d AND ordered_at < $since_90d), 0
        ) AS spend_previous_90d
    FROM completed_orders
    GROUP BY customer_id
),

-- Buyers are ranked against every buyer with an order before the cutoff, as the mart does.
order_scores AS (
    SELECT
        *,
        least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY recency_days DESC)))::INTEGER
            AS r_score,
        least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY frequency)))::INTEGER AS f_score,
        least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY monetary)))::INTEGER AS m_score
    FROM order_totals
),

favourite_categories AS (
    -- The most ordered category, ties to the smallest name.
    SELECT customer_id, arg_min(value, (-rows, value)) AS favourite_category
    FROM (
        SELECT customer_id, category AS value, count(*) AS rows
        FROM completed_orders
        WHERE category IS NOT NULL
        GROUP BY ALL
    )
    GROUP BY customer_id
),

-- Filtered to 90 days before aggregating: over the whole history this is the costly part.
email_campaigns_90d AS (
    SELECT
        customer_id,
        campaign_id,
        min(occurred_at) FILTER (WHERE event_type = 'sent') AS sent_at,
        bool_or(event_type = 'delivered') AS was_delivered,
        min(occurred_at) FILTER (WHERE event_type = 'open') AS first_open_at,
        min(occurred_at) FILTER (WHERE event_type = 'click') AS first_click_at
    FROM raw.email_events
    WHERE occurred_at >= $since_90d AND occurred_at < $cutoff
    GROUP BY customer_id, campaign_id
),

email_windows AS (
    SELECT
        customer_id,
        count(*) FILTER (WHERE sent_at >= $since_30d) AS sends_30d,
        count(sent_at) AS sends_90d,
        count(*) FILTER (WHERE was_delivered) AS deliveries_90d,
        count(*) FILTER (WHERE first_open_at >= $since_30d) AS opens_30d,
        count(first_open_at) AS opens_90d,
        count(*) FILTER (WHERE first_click_at >= $since_30d) AS clicks_30d,
        count(first_click_at) AS clicks_90d
    FROM email_campaigns_90d
    GROUP BY customer_id
),

-- Over the whole history only the rare event types matter.
email_history AS (
    SELECT
        customer_id,
        max(occurred_at) FILTER (WHERE event_type = 'open') AS last_open_at,
        max(occurred_at) FILTER (WHERE event_type = 'click') AS last_click_at,
        bool_or(event_type = 'unsubscribe') AS is_unsubscribed,
        bool_or(event_type = 'bounce') AS has_hard_bounced,
        bool_or(event_type = 'complaint') AS has_complained
    FROM raw.email_events
    WHERE event_type IN ('open', 'click', 'unsubscribe', 'bounce', 'complaint')
      AND occurred_at < $cutoff
    GROUP BY customer_id
),

engagement_365d AS (
    SELECT customer_id, occurred_at, device
    FROM raw.email_events
    WHERE event_type IN ('open', 'click') AND occurred_at >= $since_365d AND occurred_at < $cutoff
),

preferred_hours AS (
    SELECT customer_id, arg_min(value, (-rows, value)) AS preferred_hour
    FROM (
        SELECT customer_id, hour(occurred_at) AS value, count(*) AS rows
        FROM engagement_365d
        WHERE hour(occurred_at) IS NOT NULL
        GROUP BY ALL
    )
    GROUP BY customer_id
),

preferred_email_devices AS (
    SELECT customer_id, arg_min(value, (-rows, value)) AS preferred_email_device
    FROM (
        SELECT customer_id, device AS value, count(*) AS rows
        FROM engagement_365d
        WHERE device IS NOT NULL
        GROUP BY ALL
    )
    GROUP BY customer_id
),

web_events_30d AS (
    SELECT customer_id, session_id, event_type, occurred_at, lower(device) AS device
    FROM raw.web_events
    WHERE occurred_at >= $since_30d AND occurred_at < $cutoff
),

web_sessions AS (
    SELECT
        customer_id,
        date_diff('second', min(occurred_at), max(occurred_at)) AS session_seconds,
        count(*) FILTER (WHERE event_type = 'product_view') AS product_views,
        count(*) FILTER (WHERE event_type = 'add_to_cart') AS add_to_carts,
        bool_or(event_type = 'checkout') AS has_checkout
    FROM web_events_30d
    GROUP BY customer_id, session_id
),

web_totals AS (
    SELECT
        customer_id,
        count(*) AS web_sessions_30d,
        sum(product_views) AS product_views_30d,
        sum(add_to_carts) AS add_to_carts_30d,
        count(*) FILTER (WHERE add_to_carts > 0) AS cart_sessions,
        count(*) FILTER (WHERE add_to_carts > 0 AND NOT has_checkout) AS abandoned_cart_sessions,
        sum(session_seconds) / 60.0 / count(*) AS avg_session_minutes_30d
    FROM web_sessions
    GROUP BY customer_id
),

preferred_web_devices AS (
    SELECT customer_id, arg_min(value, (-rows, value)) AS preferred_web_device
    FROM (
        SELECT customer_id, device AS value, count(*) AS rows
        FROM web_events_30d
        WHERE device IS NOT NULL
        GROUP BY ALL
    )
    GROUP BY customer_id
),

review_totals AS (
    SELECT customer_id, count(*) AS review_count, avg(rating::DOUBLE) AS avg_rating
    FROM raw.reviews
    WHERE created_at < $cutoff
    GROUP BY customer_id
)

SELECT
    c.customer_id,
    o.recency_days,
    coalesce(o.frequency, 0) AS frequency,
    coalesce(o.monetary, 0) AS monetary,
    o.monetary / o.frequency AS avg_order_value,
    o.r_score,
    o.f_score,
    o.m_score,
    o.r_score + o.f_score + o.m_score AS rfm_score,
    o.r_score::VARCHAR || o.f_score::VARCHAR || o.m_score::VARCHAR AS rfm_code,
    CASE
        WHEN o.customer_id IS NULL THEN 'No purchase yet'
        WHEN o.r_score = 5 AND o.f_score >= 4 THEN 'Champions'
        WHEN o.r_score >= 3 AND o.f_score >= 4 THEN 'Loyal'
        WHEN o.r_score >= 4 AND o.f_score BETWEEN 2 AND 3 THEN 'Potential loyalist'
        WHEN o.r_score = 5 AND o.f_score = 1 THEN 'New'
        WHEN o.r_score = 4 AND o.f_score = 1 THEN 'Promising'
        WHEN o.r_score = 3 AND o.f_score = 3 THEN 'Need attention'
        WHEN o.r_score = 3 AND o.f_score <= 2 THEN 'About to sleep'
        WHEN o.r_score <= 2 AND o.f_score = 5 THEN 'Cannot lose them'
        WHEN o.r_score <= 2 AND o.f_score BETWEEN 3 AND 4 THEN 'At risk'
        WHEN o.r_score = 1 AND o.f_score = 1 THEN 'Lost'
        ELSE 'Hibernating'
    END AS rfm_segment,
    coalesce(o.orders_30d, 0) AS orders_30d,
    coalesce(o.orders_90d, 0) AS orders_90d,
    coalesce(o.orders_365d, 0) AS orders_365d,
    CASE
        WHEN o.frequency > 1
        THEN date_diff('second', o.first_order_at, o.last_order_at) / 86400.0 / (o.frequency - 1)
    END AS avg_days_between_orders,
    date_diff('day', o.first_order_at::DATE, $as_of) AS days_since_first_order,
    date_diff('day', c.signup_at::DATE, $as_of) AS days_since_signup,
    coalesce(o.spend_90d, 0) AS spend_90d,
    -- In [-1, 1]: +1 all recent spend is new, -1 spend stopped, 0 flat or no spend.
    CASE
        WHEN o.spend_90d + o.spend_previous_90d <> 0
        THEN (o.spend_90d - o.spend_previous_90d) / (o.spend_90d + o.spend_previous_90d)
        ELSE 0
    END AS spend_trend,
    coalesce(ew.sends_30d, 0) AS email_sends_30d,
    coalesce(ew.sends_90d, 0) AS email_sends_90d,
    coalesce(ew.opens_30d, 0) AS email_opens_30d,
    coalesce(ew.opens_90d, 0) AS email_opens_90d,
    coalesce(ew.clicks_30d, 0) AS email_clicks_30d,
    coalesce(ew.clicks_90d, 0) AS email_clicks_90d,
    -- Capped at 1: an open inside the window can belong to a delivery just before it. (least()
    -- skips nulls, hence the case: no deliveries is no rate, not 1.)
    CASE WHEN ew.deliveries_90d > 0 THEN least(1.0, ew.opens_90d / ew.deliveries_90d) END
        AS email_open_rate_90d,
    CASE WHEN ew.deliveries_90d > 0 THEN least(1.0, ew.clicks_90d / ew.deliveries_90d) END
        AS email_click_rate_90d,
    date_diff('day', eh.last_open_at::DATE, $as_of) AS days_since_last_open,
    date_diff('day', eh.last_click_at::DATE, $as_of) AS days_since_last_click,
    coalesce(ew.clicks_90d, 0) * 7.0 / 90 AS email_clicks_per_week_90d,
    coalesce(eh.is_unsubscribed, false) AS is_unsubscribed,
    coalesce(eh.has_hard_bounced, false) AS has_hard_bounced,
    coalesce(eh.has_complained, false) AS has_complained,
    coalesce(w.web_sessions_30d, 0) AS web_sessions_30d,
    coalesce(w.product_views_30d, 0) AS product_views_30d,
    coalesce(w.add_to_carts_30d, 0) AS add_to_carts_30d,
    w.abandoned_cart_sessions / nullif(w.cart_sessions, 0) AS cart_abandonment_rate_30d,
    w.avg_session_minutes_30d,
    coalesce(ed.preferred_email_device, wd.preferred_web_device) AS preferred_device,
    ph.preferred_hour,
    fc.favourite_category,
    upper(c.country) AS country_code,
    CASE
        WHEN c.birth_year IS NULL THEN 'unknown'
        WHEN year($as_of) - c.birth_year < 25 THEN '18-24'
        WHEN year($as_of) - c.birth_year < 35 THEN '25-34'
        WHEN year($as_of) - c.birth_year < 45 THEN '35-44'
        WHEN year($as_of) - c.birth_year < 55 THEN '45-54'
        WHEN year($as_of) - c.birth_year < 65 THEN '55-64'
        ELSE '65+'
    END AS age_band,
    lower(c.acquisition_channel) AS acquisition_channel,
    coalesce(r.review_count, 0) AS review_count,
    r.avg_rating,
    coalesce(regexp_full_match(lower(trim(c.email)), $valid_email), false) AS has_valid_email,
    -- The contract: an absent opt-in means opted in.
    coalesce(c.email_opt_in, false) AS is_opted_in  -- empty: not e-mailable (the default)
FROM known_customers c
LEFT JOIN order_scores o ON o.customer_id = c.customer_id
LEFT JOIN favourite_categories fc ON fc.customer_id = c.customer_id
LEFT JOIN email_windows ew ON ew.customer_id = c.customer_id
LEFT JOIN email_history eh ON eh.customer_id = c.customer_id
LEFT JOIN preferred_hours ph ON ph.customer_id = c.customer_id
LEFT JOIN preferred_email_devices ed ON ed.customer_id = c.customer_id
LEFT JOIN web_totals w ON w.customer_id = c.customer_id
LEFT JOIN preferred_web_devices wd ON wd.customer_id = c.customer_id
LEFT JOIN review_totals r ON r.customer_id = c.customer_id
