"""The MLflow model registry: registered versions, aliases, promotion and rollback."""
