"""The DuckDB warehouse: connections, and the definition of each table segflow writes."""
