with source as (
    select * from {{ source('derived', 'review_sentiment') }}
),

renamed as (
    select
        review_id,
        positive_probability as text_sentiment
    from source
)

select * from renamed
