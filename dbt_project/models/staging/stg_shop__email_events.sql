with source as (
    select * from {{ source('shop', 'email_events') }}
),

renamed as (
    select
        event_id,
        customer_id,
        campaign_id,
        event_type,
        occurred_at,
        device
    from source
)

select * from renamed
