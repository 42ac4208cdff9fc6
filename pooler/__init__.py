"""maitred's data plane: the PostgreSQL protocol-relay pooler."""
