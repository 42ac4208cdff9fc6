"""The maitred operator: the PostgresPooler API, the manifests it renders and the kopf handlers that apply them.

Layout (as Oracle's MySQL operator splits it): `api` is the typed API (pydantic models, the single source of
the CRD), `objects` builds every manifest from jinja2 templates, `status` decides conditions, `reconcile`
applies a rendered set through `kube` (the only module that talks to the API server), `handlers` wires it
to kopf and `main` runs kopf with production settings.
"""

GROUP = "maitred.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PostgresPooler"
PLURAL = "postgrespoolers"
SINGULAR = "postgrespooler"
SHORT_NAMES = ["pgp"]
FIELD_MANAGER = "maitred-operator"
