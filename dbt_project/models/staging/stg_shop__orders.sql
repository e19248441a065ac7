-- Each order as it stood at the as-of cutoff: a refund delivered later does not change the past.
with versions as (
    select * from {{ ref('stg_shop__order_versions') }}
),

in_force as (
    select * exclude (valid_from, valid_to)
    from versions
    where {{ in_force_at_cutoff() }}
)

select * from in_force
