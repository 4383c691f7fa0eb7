"""Search spaces (one TOML per task and stage) and the Optuna driver."""
