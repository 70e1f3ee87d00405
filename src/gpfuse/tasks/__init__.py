"""Tasks: Lightning modules, data modules and the run orchestration behind the CLI."""
