with source as (
    select * from {{ source('shop', 'customers') }}
),

renamed as (
    select
        customer_id,
        lower(trim(email)) as email,
        {{ is_valid_email('lower(trim(email))') }} as has_valid_email,
        signup_at,
        upper(country) as country_code,
        birth_year,
        lower(gender) as gender,
        lower(acquisition_channel) as acquisition_channel,
        -- The contract: an absent opt-in means opted in.
        coalesce(email_opt_in, true) as is_opted_in
    from source
)

select * from renamed
