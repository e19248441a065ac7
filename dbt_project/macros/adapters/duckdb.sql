{#- The only DuckDB-specific SQL in the project. Each macro dispatches: the `default__`
    version is portable SQL, the `duckdb__` version uses what is faster on DuckDB
    (measured here: arg_max over a grouped count beats a row_number filter). -#}

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
    {{ return(adapter.dispatch('is_valid_email', 'segflow')(column)) }}
{%- endmacro %}

{% macro default__is_valid_email(column) -%}
    coalesce({{ column }} like '%_@_%._%' and {{ column }} not like '% %' and {{ column }} not like '%@%@%', false)
{%- endmacro %}

{% macro duckdb__is_valid_email(column) -%}
    coalesce(regexp_full_match({{ column }}, '[^@\s]+@[^@\s]+\.[A-Za-z]{2,}'), false)
{%- endmacro %}
