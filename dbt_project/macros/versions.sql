{#- Customers and orders keep every delivered version in raw (`_version_at`: when it took
    effect). The order of the versions is segflow's (ml/contract.py VERSION_ORDER): when they
    took effect, then delivery order; tests/features/test_value_lists.py keeps the two equal. -#}

{% macro version_validity() -%}
    {#- A version is valid from when it took effect (null for the first: since always) to when
        the next one did (null: still in force). -#}
    case when row_number() over versions > 1 then _version_at end as valid_from,
    lead(_version_at) over versions as valid_to
{%- endmacro %}

{% macro versions_window(key) -%}
    window versions as (partition by {{ key }} order by _version_at, _loaded_at, _source_file, _source_row)
{%- endmacro %}

{% macro in_force_at_cutoff() -%}
    (valid_from is null or valid_from < {{ as_of_cutoff() }})
    and (valid_to is null or valid_to >= {{ as_of_cutoff() }})
{%- endmacro %}
