"""maitred's data plane: the PostgreSQL protocol-relay pooler."""
from pooler.compiled import refuse_stale

refuse_stale()
