-- Every version of every customer, each valid from the moment it took effect until the next
-- one did (the loader's rule: `updated_at` when the export has it, else the file's partition
-- date, else the load time; ties in delivery order). A customer's first version is valid
-- since always: it is the earliest that is known of them.
--
-- Not a dbt snapshot: a snapshot dates a change by when dbt saw it, so a backfill or a late
-- delivery would be dated wrong. raw keeps every delivered version, so the history is derived
-- from it, point in time, and rebuilt identically on any re-run.
with source as (
    select * from {{ source('shop', 'customer_versions') }}
),

renamed as (
    select
        customer_id,
        {{ version_validity() }},
        lower(trim(email)) as email,
        {{ is_valid_email('lower(trim(email))') }} as has_valid_email,
        signup_at,
        upper(country) as country_code,
        birth_year,
        lower(gender) as gender,
        lower(acquisition_channel) as acquisition_channel,
        -- What an empty opt-in means is a setting, privacy-safe by default (not e-mailable).
        coalesce(email_opt_in, {{ 'true' if env_var('SEGFLOW_EMPTY_OPT_IN_MEANS', 'opted_out') == 'opted_in' else 'false' }}) as is_opted_in
    from source
    {{ versions_window('customer_id') }}
)

select * from renamed
