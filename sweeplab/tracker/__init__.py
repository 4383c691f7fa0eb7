"""MLflow: the store, logging a sweep (batched), curve analysis, queries and plots."""
