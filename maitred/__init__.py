"""maitred: a PostgreSQL connection-pooling tier for Kubernetes."""

__version__ = "0.1.0"
