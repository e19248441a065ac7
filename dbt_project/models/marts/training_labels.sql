-- What happened in the label horizon after an as-of date, per customer known on that date.
-- By default a run for D labels D - horizon, the latest date whose horizon has fully passed
-- (its window ends where D's data ends). Never joined into customer_features: models join the
-- two at training time, on the same as_of_date.
{%- set horizon = var('label_horizon_days') %}

with label_date as (
    select
        {{ label_as_of_date() }} as as_of_date,
        cast({{ dbt.dateadd('day', 1, label_as_of_date()) }} as {{ dbt.type_timestamp() }}) as window_start,
        cast({{ dbt.dateadd('day', 1 + horizon, label_as_of_date()) }} as {{ dbt.type_timestamp() }}) as window_end,
        cast({{ dbt.dateadd('day', 1 - 365, label_as_of_date()) }} as {{ dbt.type_timestamp() }}) as active_since
),

customers as (
    select customers.customer_id
    from {{ ref('stg_shop__customers') }} as customers
    cross join label_date
    where customers.signup_at < label_date.window_start
),

orders as (
    select orders.*
    from {{ ref('stg_shop__orders') }} as orders
    cross join label_date
    where orders.is_completed and orders.ordered_at < label_date.window_end
),

history as (
    -- "Active" on the as-of date: a completed order in the year before it.
    select orders.customer_id, count(*) as orders_last_365d
    from orders
    cross join label_date
    where orders.ordered_at >= label_date.active_since and orders.ordered_at < label_date.window_start
    group by orders.customer_id
),

outcomes as (
    select orders.customer_id, count(*) as orders_in_horizon, sum(orders.order_amount) as revenue_in_horizon
    from orders
    cross join label_date
    where orders.ordered_at >= label_date.window_start
    group by orders.customer_id
),

clicks as (
    select distinct events.customer_id
    from {{ ref('stg_shop__email_events') }} as events
    cross join label_date
    where events.event_type = 'click'
      and events.occurred_at >= label_date.window_start
      and events.occurred_at < label_date.window_end
),

final as (
    select
        customers.customer_id,
        label_date.as_of_date,
        {{ horizon }} as horizon_days,
        case when outcomes.customer_id is not null then 1 else 0 end as purchased,
        coalesce(outcomes.orders_in_horizon, 0) as orders_in_horizon,
        coalesce(outcomes.revenue_in_horizon, 0) as revenue_in_horizon,
        case when clicks.customer_id is not null then 1 else 0 end as clicked_email,
        history.customer_id is not null as was_active,
        -- Churn is defined for active customers only.
        case
            when history.customer_id is null then null
            when outcomes.customer_id is null then 1
            else 0
        end as churned
    from customers
    cross join label_date
    left join history on history.customer_id = customers.customer_id
    left join outcomes on outcomes.customer_id = customers.customer_id
    left join clicks on clicks.customer_id = customers.customer_id
)

select * from final
