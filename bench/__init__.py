"""Load-trace benchmark of dramactl's scaling policies: ``python -m bench``."""
