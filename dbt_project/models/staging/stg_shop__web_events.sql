with source as (
    select * from {{ source('shop', 'web_events') }}
),

renamed as (
    select
        event_id,
        customer_id,
        session_id,
        event_type,
        occurred_at,
        lower(device) as device,
        lower(category) as category
    from source
)

select * from renamed
