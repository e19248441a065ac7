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
        avg(cast(reviews.rating as {{ dbt.type_float() }})) as avg_rating,
        avg(sentiments.text_sentiment) as avg_review_sentiment
    from reviews
    left join sentiments on sentiments.review_id = reviews.review_id
    group by reviews.customer_id
)

select * from final
