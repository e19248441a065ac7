-- RFM quintile scores and the classic named RFM segment, for every customer known as of the
-- run's date. Scores rank buyers against each other (5 = best) by percent rank: ties share a
-- score, so the same data always gives the same scores, and the many one-order customers all
-- score F = 1 (a cume_dist would lift them all to 2 and leave nobody "New").
-- Customers without a completed order have no scores.
with customers as (
    select * from {{ ref('stg_shop__customers') }}
    where signup_at < {{ as_of_cutoff() }}
),

orders as (
    select * from {{ ref('int_orders_aggregated_to_customers') }}
),

scored as (
    select
        orders.customer_id,
        cast(least(5, 1 + floor(5 * percent_rank() over (order by orders.recency_days desc))) as {{ dbt.type_int() }}) as r_score,
        cast(least(5, 1 + floor(5 * percent_rank() over (order by orders.frequency))) as {{ dbt.type_int() }}) as f_score,
        cast(least(5, 1 + floor(5 * percent_rank() over (order by orders.monetary))) as {{ dbt.type_int() }}) as m_score
    from orders
),

final as (
    select
        customers.customer_id,
        scored.r_score,
        scored.f_score,
        scored.m_score,
        scored.r_score + scored.f_score + scored.m_score as rfm_score,
        {{ dbt.concat(["cast(scored.r_score as " ~ dbt.type_string() ~ ")",
                       "cast(scored.f_score as " ~ dbt.type_string() ~ ")",
                       "cast(scored.m_score as " ~ dbt.type_string() ~ ")"]) }} as rfm_code,
        -- The usual recency x frequency grid (R first): e.g. R 5 and F 4-5 are Champions.
        -- The names are ml/features/vocabulary.py RFM_SEGMENTS, kept equal by tests/features/test_value_lists.py.
        case
            when scored.customer_id is null then 'No purchase yet'
            when scored.r_score = 5 and scored.f_score >= 4 then 'Champions'
            when scored.r_score >= 3 and scored.f_score >= 4 then 'Loyal'
            when scored.r_score >= 4 and scored.f_score between 2 and 3 then 'Potential loyalist'
            when scored.r_score = 5 and scored.f_score = 1 then 'New'
            when scored.r_score = 4 and scored.f_score = 1 then 'Promising'
            when scored.r_score = 3 and scored.f_score = 3 then 'Need attention'
            when scored.r_score = 3 and scored.f_score <= 2 then 'About to sleep'
            when scored.r_score <= 2 and scored.f_score = 5 then 'Cannot lose them'
            when scored.r_score <= 2 and scored.f_score between 3 and 4 then 'At risk'
            when scored.r_score = 1 and scored.f_score = 1 then 'Lost'
            else 'Hibernating'
        end as rfm_segment
    from customers
    left join scored on scored.customer_id = customers.customer_id
)

select * from final
