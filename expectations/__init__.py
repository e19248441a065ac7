"""Great Expectations suites as code, one per gated table, and the runner that validates a
DataFrame and builds Data Docs. The suites arrive with the data-quality issue; the DAG decides
what a failure means."""
