-- Every version of every order (a status or amount delivered again), valid from the moment it
-- took effect until the next one did; the rule is the customers' (stg_shop__customer_versions).
with source as (
    select * from {{ source('shop', 'order_versions') }}
),

renamed as (
    select
        order_id,
        {{ version_validity() }},
        customer_id,
        ordered_at,
        amount as order_amount,
        items as item_count,
        lower(category) as category,
        -- The contract: an order without a status is completed; only completed orders count.
        coalesce(status, 'completed') as order_status,
        coalesce(status, 'completed') = 'completed' as is_completed
    from source
    {{ versions_window('order_id') }}
)

select * from renamed
