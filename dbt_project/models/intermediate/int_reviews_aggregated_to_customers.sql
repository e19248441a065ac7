-- Reviews per customer as of the run's date, with the text signal computed in Python.
with reviews as (
    select * from {{ ref('stg_shop__reviews') }}
    where created_at < {{ as_of_cutoff() }}
),

sentiments as (
    select * from {{ ref('stg_derived__review_sentiments') }}
),

final as (
    select
        reviews.customer_id,
        count(*) as review_count,
        avg(cast(reviews.rating as double precision)) as avg_rating,
        -- Averaged as decimals: exact, so independent of the order of summation (re-runs match).
        cast(avg(cast(sentiments.text_sentiment as decimal(18, 6))) as double precision) as avg_review_sentiment
    from reviews
    left join sentiments on sentiments.review_id = reviews.review_id
    group by reviews.customer_id
)

select * from final
