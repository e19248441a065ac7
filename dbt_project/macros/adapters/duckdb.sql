{#- The only DuckDB-specific SQL in the project. Each macro dispatches: the `default__`
    version is portable SQL, the `duckdb__` version uses what is faster on DuckDB
    (measured here: arg_max over a grouped count beats a row_number filter). The address rule
    is a regular expression, which has no portable SQL: it has a DuckDB version only. -#}

{% macro most_frequent_by_customer(counts, value, weight) -%}
    {#- From `counts` (customer_id, <value>, <weight>): each customer's value with the largest
        weight, ties going to the smallest value, so re-runs give the same answer. -#}
    {{ return(adapter.dispatch('most_frequent_by_customer', 'segflow')(counts, value, weight)) }}
{%- endmacro %}

{% macro default__most_frequent_by_customer(counts, value, weight) -%}
    select customer_id, {{ value }}
    from (
        select
            customer_id,
            {{ value }},
            row_number() over (
                partition by customer_id order by {{ weight }} desc, {{ value }}
            ) as preference_rank
        from {{ counts }}
    ) ranked
    where preference_rank = 1
{%- endmacro %}

{% macro duckdb__most_frequent_by_customer(counts, value, weight) -%}
    select customer_id, arg_min({{ value }}, ({{ weight }} * -1, {{ value }})) as {{ value }}
    from {{ counts }}
    group by customer_id
{%- endmacro %}

{% macro is_valid_email(column) -%}
    {#- Whether the address is a plain address, false when it is null. The rule is segflow's
        one definition (ml/contract.py PLAIN_ADDRESS_PATTERN, applied to exports by
        ml/segments/consent.py too), which segflow hands to every dbt run it starts in
        SEGFLOW_PLAIN_ADDRESS_PATTERN (ml/features/dbt.py dbt_environment). -#}
    {{ return(adapter.dispatch('is_valid_email', 'segflow')(column)) }}
{%- endmacro %}

{% macro default__is_valid_email(column) -%}
    {{ exceptions.raise_compiler_error("is_valid_email: the address rule needs a regular-expression match; add a version for this adapter") }}
{%- endmacro %}

{% macro duckdb__is_valid_email(column) -%}
    coalesce(regexp_full_match({{ column }}, '{{ env_var("SEGFLOW_PLAIN_ADDRESS_PATTERN") | replace("'", "''") }}'), false)
{%- endmacro %}
