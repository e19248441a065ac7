{#- The columns together identify a row (what dbt_utils.unique_combination_of_columns does;
    the package hub is out of reach here, and this is all we need of it). -#}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as occurrences
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
