with source as (
    select * from {{ source('shop', 'reviews') }}
),

renamed as (
    select
        review_id,
        customer_id,
        created_at,
        rating,
        text as review_text
    from source
)

select * from renamed
