"""The sweep engine on Optuna: search spaces (one TOML per task and stage), the driver and its rooms."""
