-- Purchase history per customer as of the run's date: completed orders only.
with orders as (
    select * from {{ ref('stg_shop__orders') }}
    where is_completed
      and ordered_at < {{ as_of_cutoff() }}
),

aggregated as (
    select
        customer_id,
        count(*) as frequency,
        sum(order_amount) as monetary,
        min(ordered_at) as first_order_at,
        max(ordered_at) as last_order_at,
        sum(case when ordered_at >= {{ days_before_cutoff(30) }} then 1 else 0 end) as orders_30d,
        sum(case when ordered_at >= {{ days_before_cutoff(90) }} then 1 else 0 end) as orders_90d,
        sum(case when ordered_at >= {{ days_before_cutoff(365) }} then 1 else 0 end) as orders_365d,
        sum(case when ordered_at >= {{ days_before_cutoff(90) }} then order_amount else 0 end) as spend_90d,
        sum(
            case when ordered_at >= {{ days_before_cutoff(180) }}
                  and ordered_at < {{ days_before_cutoff(90) }} then order_amount else 0 end
        ) as spend_previous_90d
    from orders
    group by customer_id
),

category_counts as (
    select customer_id, category, count(*) as order_count
    from orders
    where category is not null
    group by customer_id, category
),

favourite_category as (
    {{ most_frequent_by_customer('category_counts', 'category', 'order_count') }}
),

final as (
    select
        aggregated.customer_id,
        aggregated.frequency,
        aggregated.monetary,
        aggregated.monetary / aggregated.frequency as avg_order_value,
        {{ dbt.datediff('cast(aggregated.last_order_at as date)', as_of_date(), 'day') }} as recency_days,
        {{ dbt.datediff('cast(aggregated.first_order_at as date)', as_of_date(), 'day') }} as days_since_first_order,
        case
            when aggregated.frequency > 1
            then {{ dbt.datediff('aggregated.first_order_at', 'aggregated.last_order_at', 'second') }}
                 / 86400.0 / (aggregated.frequency - 1)
        end as avg_days_between_orders,
        aggregated.orders_30d,
        aggregated.orders_90d,
        aggregated.orders_365d,
        aggregated.spend_90d,
        aggregated.spend_previous_90d,
        -- In [-1, 1]: +1 all recent spend is new, -1 spend stopped, 0 flat (or no spend at all).
        case
            when aggregated.spend_90d + aggregated.spend_previous_90d = 0 then 0
            else (aggregated.spend_90d - aggregated.spend_previous_90d)
                 / (aggregated.spend_90d + aggregated.spend_previous_90d)
        end as spend_trend,
        favourite_category.category as favourite_category
    from aggregated
    left join favourite_category on favourite_category.customer_id = aggregated.customer_id
)

select * from final
