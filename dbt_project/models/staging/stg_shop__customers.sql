-- Each customer as they were at the as-of cutoff: the version in force then.
with versions as (
    select * from {{ ref('stg_shop__customer_versions') }}
),

in_force as (
    select * exclude (valid_from, valid_to)
    from versions
    where {{ in_force_at_cutoff() }}
)

select * from in_force
