with source as (
    select * from {{ source('shop', 'orders') }}
),

renamed as (
    select
        order_id,
        customer_id,
        ordered_at,
        amount as order_amount,
        items as item_count,
        lower(category) as category,
        -- The contract: an order without a status is completed; only completed orders count.
        coalesce(status, 'completed') as order_status,
        coalesce(status, 'completed') = 'completed' as is_completed
    from source
)

select * from renamed
