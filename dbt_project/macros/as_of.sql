{#- Point in time. A feature "as of" D uses only rows with a timestamp strictly before the start
    of D + 1 day; a label for D looks only at the horizon after that instant. -#}

{% macro as_of_date() -%}
    {%- set value = var('as_of_date') -%}
    {#- `dbt parse` and `dbt docs generate` render models without a date: any date will do there. -#}
    {%- if value is none and not execute -%}
        {%- set value = '1970-01-01' -%}
    {%- endif -%}
    {%- if value is none -%}
        {{ exceptions.raise_compiler_error("var as_of_date is required: dbt build --vars '{as_of_date: YYYY-MM-DD}'") }}
    {%- endif -%}
    {%- if modules.re.match('^\d{4}-\d{2}-\d{2}$', value | string) is none -%}
        {{ exceptions.raise_compiler_error("var as_of_date=" ~ value ~ " is not a date (YYYY-MM-DD)") }}
    {%- endif -%}
    cast('{{ value }}' as date)
{%- endmacro %}

{% macro as_of_cutoff() -%}
    {#- The first instant that is no longer "as of" the date. -#}
    cast({{ dbt.dateadd('day', 1, as_of_date()) }} as {{ dbt.type_timestamp() }})
{%- endmacro %}

{% macro days_before_cutoff(days) -%}
    cast({{ dbt.dateadd('day', -days, as_of_cutoff()) }} as {{ dbt.type_timestamp() }})
{%- endmacro %}

{% macro label_as_of_date() -%}
    {%- set explicit = var('label_as_of_date') -%}
    {%- if explicit is not none -%}
        cast('{{ explicit }}' as date)
    {%- else -%}
        cast({{ dbt.dateadd('day', -var('label_horizon_days'), as_of_date()) }} as date)
    {%- endif -%}
{%- endmacro %}
