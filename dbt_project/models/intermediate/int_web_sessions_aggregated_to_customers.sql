-- Web behaviour per customer in the 30 days up to the run's date, by session.
with events as (
    select * from {{ ref('stg_shop__web_events') }}
    where occurred_at < {{ as_of_cutoff() }}
      and occurred_at >= {{ days_before_cutoff(30) }}
),

sessions as (
    select
        customer_id,
        session_id,
        min(occurred_at) as started_at,
        max(occurred_at) as ended_at,
        sum(case when event_type = 'product_view' then 1 else 0 end) as product_views,
        sum(case when event_type = 'add_to_cart' then 1 else 0 end) as add_to_carts,
        max(case when event_type = 'add_to_cart' then 1 else 0 end) as has_cart,
        max(case when event_type = 'checkout' then 1 else 0 end) as has_checkout
    from events
    group by customer_id, session_id
),

device_counts as (
    select customer_id, device, count(*) as event_count
    from events
    where device is not null
    group by customer_id, device
),

preferred_device as (
    {{ most_frequent_by_customer('device_counts', 'device', 'event_count') }}
),

aggregated as (
    select
        customer_id,
        count(*) as sessions_30d,
        sum(product_views) as product_views_30d,
        sum(add_to_carts) as add_to_carts_30d,
        sum(has_cart) as cart_sessions_30d,
        sum(case when has_cart = 1 and has_checkout = 0 then 1 else 0 end) as abandoned_cart_sessions_30d,
        -- Whole seconds summed exactly, divided once: a float average would depend on the order
        -- in which parallel threads add, and re-runs must give identical output.
        sum({{ dbt.datediff('started_at', 'ended_at', 'second') }}) / 60.0 / count(*) as avg_session_minutes_30d
    from sessions
    group by customer_id
),

final as (
    select
        aggregated.customer_id,
        aggregated.sessions_30d,
        aggregated.product_views_30d,
        aggregated.add_to_carts_30d,
        case when aggregated.cart_sessions_30d > 0
             then aggregated.abandoned_cart_sessions_30d * 1.0 / aggregated.cart_sessions_30d
        end as cart_abandonment_rate_30d,
        aggregated.avg_session_minutes_30d,
        preferred_device.device as preferred_web_device
    from aggregated
    left join preferred_device on preferred_device.customer_id = aggregated.customer_id
)

select * from final
