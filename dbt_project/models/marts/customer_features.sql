-- One row per customer known on the as-of date: the features every model and segment reads.
-- Incremental by as_of_date: a run replaces exactly its date's rows (delete+insert).
with customers as (
    select * from {{ ref('stg_shop__customers') }}
    where signup_at < {{ as_of_cutoff() }}
),

rfm as (
    select * from {{ ref('int_customers_rfm_scored') }}
),

orders as (
    select * from {{ ref('int_orders_aggregated_to_customers') }}
),

email as (
    select * from {{ ref('int_email_events_aggregated_to_customers') }}
),

web as (
    select * from {{ ref('int_web_sessions_aggregated_to_customers') }}
),

reviews as (
    select * from {{ ref('int_reviews_aggregated_to_customers') }}
),

final as (
    select
        customers.customer_id,
        {{ as_of_date() }} as as_of_date,

        -- RFM
        orders.recency_days,
        coalesce(orders.frequency, 0) as frequency,
        coalesce(orders.monetary, 0) as monetary,
        orders.avg_order_value,
        rfm.r_score,
        rfm.f_score,
        rfm.m_score,
        rfm.rfm_score,
        rfm.rfm_code,
        rfm.rfm_segment,

        -- Purchase rhythm
        cast(coalesce(orders.orders_30d, 0) as {{ dbt.type_bigint() }}) as orders_30d,
        cast(coalesce(orders.orders_90d, 0) as {{ dbt.type_bigint() }}) as orders_90d,
        cast(coalesce(orders.orders_365d, 0) as {{ dbt.type_bigint() }}) as orders_365d,
        orders.avg_days_between_orders,
        orders.days_since_first_order,
        {{ dbt.datediff('cast(customers.signup_at as date)', as_of_date(), 'day') }} as days_since_signup,
        coalesce(orders.spend_90d, 0) as spend_90d,
        coalesce(orders.spend_trend, 0) as spend_trend,

        -- E-mail engagement
        cast(coalesce(email.sends_30d, 0) as {{ dbt.type_bigint() }}) as email_sends_30d,
        cast(coalesce(email.sends_90d, 0) as {{ dbt.type_bigint() }}) as email_sends_90d,
        cast(coalesce(email.opens_30d, 0) as {{ dbt.type_bigint() }}) as email_opens_30d,
        cast(coalesce(email.opens_90d, 0) as {{ dbt.type_bigint() }}) as email_opens_90d,
        cast(coalesce(email.clicks_30d, 0) as {{ dbt.type_bigint() }}) as email_clicks_30d,
        cast(coalesce(email.clicks_90d, 0) as {{ dbt.type_bigint() }}) as email_clicks_90d,
        email.open_rate_90d as email_open_rate_90d,
        email.click_rate_90d as email_click_rate_90d,
        email.days_since_last_open,
        email.days_since_last_click,
        coalesce(email.clicks_per_week_90d, 0) as email_clicks_per_week_90d,
        coalesce(email.is_unsubscribed, false) as is_unsubscribed,
        coalesce(email.has_hard_bounced, false) as has_hard_bounced,
        coalesce(email.has_complained, false) as has_complained,

        -- Web behaviour (30 days)
        coalesce(web.sessions_30d, 0) as web_sessions_30d,
        cast(coalesce(web.product_views_30d, 0) as {{ dbt.type_bigint() }}) as product_views_30d,
        cast(coalesce(web.add_to_carts_30d, 0) as {{ dbt.type_bigint() }}) as add_to_carts_30d,
        web.cart_abandonment_rate_30d,
        web.avg_session_minutes_30d,

        -- Context
        coalesce(email.preferred_email_device, web.preferred_web_device) as preferred_device,
        email.preferred_hour,
        orders.favourite_category,
        customers.country_code,
        -- The bands are ml/features/vocabulary.py AGE_BANDS, kept equal by tests/features/test_value_lists.py.
        case
            when customers.birth_year is null then 'unknown'
            when extract(year from {{ as_of_date() }}) - customers.birth_year < 25 then '18-24'
            when extract(year from {{ as_of_date() }}) - customers.birth_year < 35 then '25-34'
            when extract(year from {{ as_of_date() }}) - customers.birth_year < 45 then '35-44'
            when extract(year from {{ as_of_date() }}) - customers.birth_year < 55 then '45-54'
            when extract(year from {{ as_of_date() }}) - customers.birth_year < 65 then '55-64'
            else '65+'
        end as age_band,
        customers.acquisition_channel,

        -- Reviews
        coalesce(reviews.review_count, 0) as review_count,
        reviews.avg_rating,
        reviews.avg_review_sentiment,

        -- Reachability (consent is decided when publishing; these are its inputs)
        customers.has_valid_email,
        customers.is_opted_in
    from customers
    left join rfm on rfm.customer_id = customers.customer_id
    left join orders on orders.customer_id = customers.customer_id
    left join email on email.customer_id = customers.customer_id
    left join web on web.customer_id = customers.customer_id
    left join reviews on reviews.customer_id = customers.customer_id
)

select * from final
