-- Every version of every order (a status or amount delivered again), valid from the moment it
-- took effect until the next one did; the rule is the customers' (stg_shop__customer_versions).
with source as (
    select * from {{ source('shop', 'order_versions') }}
),

ordered as (
    select
        *,
        row_number() over delivery as version_number,
        lead(_version_at) over delivery as superseded_at
    from source
    window delivery as (partition by order_id order by _version_at, _loaded_at, _source_file, _source_row)
),

renamed as (
    select
        order_id,
        case when version_number > 1 then _version_at end as valid_from,
        superseded_at as valid_to,
        customer_id,
        ordered_at,
        amount as order_amount,
        items as item_count,
        lower(category) as category,
        -- The contract: an order without a status is completed; only completed orders count.
        coalesce(status, 'completed') as order_status,
        coalesce(status, 'completed') = 'completed' as is_completed
    from ordered
)

select * from renamed
