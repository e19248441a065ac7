"""Great Expectations suites as code (`suites`), one per gated table, and the runner that
validates a DataFrame, records the results and builds Data Docs (`runner`). Which rows a gate
sees and what a failure means for the run are decided by `ml.quality.gates` and the DAG."""
