"""The PostgresPooler CustomResourceDefinition, generated from the pydantic models of `api`.

Kubernetes wants a structural schema: every node typed, no `$ref`, no free `anyOf`, no `additionalProperties:
false`. Pydantic's JSON schema is turned into one here: references are inlined, `X | None` becomes an
optional X, int-or-string unions keep the `x-kubernetes-int-or-string` shape, and titles are dropped.
`maitred render --crd` prints the result; crds/postgrespooler.yaml is that output, and a test fails when the
two drift.
"""
from __future__ import annotations

from typing import Any

from . import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .api import PostgresPoolerSpec, PostgresPoolerStatus
from .objects import to_yaml

_DROP = {"title", "$defs"}
_ORDER = {key: i for i, key in enumerate([
    "type", "description", "format", "enum", "default", "minimum", "maximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "maxProperties", "x-kubernetes-int-or-string", "anyOf",
    "x-kubernetes-preserve-unknown-fields", "properties", "required", "additionalProperties", "items",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-validations"])}


class NotStructural(ValueError):
    """The models produced a schema Kubernetes would refuse."""


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """One JSON-schema node of pydantic's output as a structural OpenAPI v3 node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
        return structural(node, defs, path)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise NotStructural(f"{path or '<root>'}: a union of {len(options)} types has no structural form")
        if node.get("default", ...) is None:
            del node["default"]
        return structural({**options[0], **node}, defs, path)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict) and "properties" not in node:
                out["additionalProperties"] = structural(value, defs, f"{path}.*")
        elif key == "anyOf":
            out["anyOf"] = [{"type": o["type"]} for o in value]
        else:
            out[key] = value
    if "type" not in out and not (out.get("x-kubernetes-int-or-string")
                                  or out.get("x-kubernetes-preserve-unknown-fields")):
        raise NotStructural(f"{path or '<root>'}: no type")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return dict(sorted(out.items(), key=lambda kv: _ORDER.get(kv[0], len(_ORDER))))


def model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


PRINTER_COLUMNS = [
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "description": "deployment or sidecar"},
    {"name": "Pool Mode", "type": "string", "jsonPath": ".spec.poolMode", "description": "pool_mode"},
    {"name": "Replicas", "type": "string", "jsonPath": ".status.replicasReady",
     "description": "Ready/desired pooler pods"},
    {"name": "Pool Size", "type": "integer", "jsonPath": ".status.poolSize",
     "description": "default_pool_size in force"},
    {"name": "Budget", "type": "integer", "jsonPath": ".status.budget",
     "description": "Most server connections per database the tier may open"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status",
     "description": "The Ready condition"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason",
     "priority": 1, "description": "Why Ready is what it is"},
    {"name": "Host", "type": "string", "jsonPath": ".spec.database.host", "priority": 1,
     "description": "PostgreSQL host"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

NAME_RULE = {"rule": "self.metadata.name.size() <= 52",
             "message": "metadata.name must be at most 52 characters: it names the pods' objects and labels"}


def custom_resource_definition() -> dict[str, Any]:
    """The CRD, as a plain dict ready for YAML."""
    schema = {
        "type": "object",
        "description": "A PostgreSQL connection-pooler tier run and tuned by maitred.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(PostgresPoolerSpec),
            "status": model_schema(PostgresPoolerStatus),
        },
        "x-kubernetes-validations": [NAME_RULE],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "maitred", "app.kubernetes.io/part-of": "maitred"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": ["maitred"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.replicas",
                              "statusReplicasPath": ".status.replicas",
                              "labelSelectorPath": ".status.selector"},
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def crd_yaml() -> str:
    header = ("# Generated by `maitred render --crd` from operator/pooler_operator/api.py; do not edit.\n"
              "# Regenerate: maitred render --crd > crds/postgrespooler.yaml\n")
    return header + to_yaml([custom_resource_definition()])
