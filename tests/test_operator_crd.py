"""The PostgresPooler CRD: generated from the models, structural, and as strict as the models."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from pooler.settings import PASSWORD_AUTH_TYPES, POOL_MODES, SETTINGS, SSLMODES
from pooler_operator import api
from pooler_operator.crd import crd_yaml, custom_resource_definition

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "postgrespooler.yaml"
EXAMPLE = ROOT / "examples" / "postgrespooler.yaml"


def schema() -> dict[str, Any]:
    return custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


def minimal() -> dict[str, Any]:
    return {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler", "metadata": {"name": "p"},
            "spec": {"database": {"host": "db"}, "auth": {"usersSecret": {"name": "users"}}}}


def example() -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == "PostgresPooler")


def test_crd_file_is_what_the_models_generate():
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/postgrespooler.yaml is stale: run `maitred render --crd > crds/postgrespooler.yaml`")


def test_schema_is_structural():
    for path, node in nodes(schema()):
        assert "$ref" not in node and "$defs" not in node, path
        assert "title" not in node and "nullable" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, f"{path}: free anyOf"
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: untyped"


def test_quantities_and_int_or_percent_are_int_or_string():
    props = schema()["properties"]["spec"]["properties"]
    quantity = props["resources"]["properties"]["requests"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True and quantity["pattern"] == api.QUANTITY_PATTERN
    assert props["podDisruptionBudget"]["properties"]["maxUnavailable"]["x-kubernetes-int-or-string"] is True


def test_free_form_kubernetes_objects_keep_unknown_fields():
    template = schema()["properties"]["spec"]["properties"]["template"]["properties"]
    assert template["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert template["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert template["topologySpreadConstraints"]["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_every_spec_field_has_a_description_for_kubectl_explain():
    for path, node in nodes(schema()["properties"]["spec"], ".spec"):
        if path.endswith(".*") or path.endswith("[]"):
            continue
        assert node.get("description"), f"{path} has no description"


def test_nested_objects_default_to_empty_so_their_own_defaults_apply():
    props = schema()["properties"]["spec"]["properties"]
    for name in ("pool", "pooler", "autotune", "service", "podDisruptionBudget", "monitoring"):
        assert props[name]["default"] == {}, name
    assert props["pool"]["properties"]["defaultPoolSize"]["default"] == 20
    assert props["mode"]["default"] == "deployment" and props["poolMode"]["default"] == "transaction"


def test_enums_come_from_the_pooler_catalogue():
    props = schema()["properties"]["spec"]["properties"]
    assert props["poolMode"]["enum"] == list(POOL_MODES)
    assert props["auth"]["properties"]["type"]["enum"] == list(PASSWORD_AUTH_TYPES)   # no hba, cert files
    assert props["tls"]["properties"]["client"]["properties"]["sslmode"]["enum"] == list(SSLMODES)


def test_status_and_scale_subresources_let_autoscalers_drive_replicas():
    version = custom_resource_definition()["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}


def test_printer_columns_show_mode_pool_mode_replicas_pool_size_budget_ready_age():
    columns = custom_resource_definition()["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    assert default == ["Mode", "Pool Mode", "Replicas", "Pool Size", "Budget", "Ready", "Age"]
    names = custom_resource_definition()["spec"]["names"]
    assert names["shortNames"] == ["pgp"] and names["kind"] == "PostgresPooler"


def test_status_conditions_are_a_map_keyed_by_type():
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


# -- the schema and the models agree on valid and invalid resources -----------------------------------------


def validate(resource: dict[str, Any]) -> None:
    jsonschema.validate(resource, schema(), cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("resource", [minimal(), example()], ids=["minimal", "example"])
def test_valid_resources_pass_schema_and_models(resource):
    validate(resource)
    assert api.spec_problems(resource["spec"]) == []


def _with(path: str, value: Any) -> dict[str, Any]:
    resource = copy.deepcopy(minimal())
    node = resource["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return resource


_DELETE = object()

SCHEMA_INVALID = {
    "pool mode not in the enum": ("poolMode", "batch"),
    "negative replicas": ("replicas", -1),
    "pool size zero": ("pool.defaultPoolSize", 0),
    "host missing": ("database.host", _DELETE),
    "port out of range": ("database.port", 70000),
    "host with a space": ("database.host", "db host"),
    "mode not in the enum": ("mode", "daemonset"),
    "quantity that is not one": ("resources", {"requests": {"cpu": "lots"}}),
    "parameter spanning lines": ("pooler.parameters", {"server_reset_query": "DISCARD ALL\n[databases]"}),
    "service type not in the enum": ("service.type", "ExternalName"),
    "workers zero": ("pooler.workers", 0),
    "scrape interval without a unit": ("monitoring.interval", "30"),
    "auth type not supported": ("auth.type", "hba"),
}


@pytest.mark.parametrize("path,value", SCHEMA_INVALID.values(), ids=SCHEMA_INVALID.keys())
def test_invalid_resources_fail_schema_and_models(path, value):
    resource = _with(path, value)
    with pytest.raises(jsonschema.ValidationError):
        validate(resource)
    assert api.spec_problems(resource["spec"]), "the models accept what the schema refuses"


RULES = {
    "min pool above default": ("pool", {"defaultPoolSize": 5, "minPoolSize": 10},
                               "pool.minPoolSize must not exceed pool.defaultPoolSize"),
    "autotune min above max": ("autotune", {"minPoolSize": 50, "maxPoolSize": 10},
                               "autotune.minPoolSize must not exceed autotune.maxPoolSize"),
    "no users at all": ("auth", {"type": "md5"}, "set auth.usersSecret, auth.authQuery or both"),
    "client tls without a certificate": ("tls", {"client": {"sslmode": "require"}},
                                         "tls.client.secretName is needed unless tls.client.sslmode is disable"),
    "pdb with both bounds": ("podDisruptionBudget", {"maxUnavailable": 1, "minAvailable": 1},
                             "set podDisruptionBudget.maxUnavailable or minAvailable, not both"),
    "owned parameter": ("pooler", {"parameters": {"default_pool_size": 50}},
                        "default_pool_size is set from spec.pool.defaultPoolSize"),
    "operator-owned listen port": ("pooler", {"parameters": {"listen_port": 6432}},
                                   "listen_port is set by the operator"),
}


@pytest.mark.parametrize("field,value,message", RULES.values(), ids=RULES.keys())
def test_cross_field_rules_are_cel_for_the_api_server_and_checked_by_the_models(field, value, message):
    resource = _with(field, value)
    validate(resource)  # plain JSON schema cannot say it: the CEL rule does
    problems = api.spec_problems(resource["spec"])
    assert any(message in p for p in problems), problems
    assert message in CRD_FILE.read_text(), "the CEL rule with this message is missing from the CRD"


def test_unknown_parameter_is_refused_by_name():
    problems = api.spec_problems(_with("pooler.parameters", {"max_prepared_statement": "10"})["spec"])
    assert problems == ["spec.pooler.parameters: max_prepared_statement is not a pooler setting"]


def test_parameter_value_is_parsed_as_the_pooler_parses_it():
    problems = api.spec_problems(_with("pooler.parameters", {"max_prepared_statements": "many"})["spec"])
    assert len(problems) == 1 and problems[0].startswith("spec.pooler.parameters: max_prepared_statements:")
    assert api.spec_problems(_with("pooler.parameters", {"max_prepared_statements": 100,
                                                          "log_connections": "0"})["spec"]) == []


def test_owned_parameters_and_pool_fields_are_real_pooler_settings():
    for name in api.OWNED_PARAMETERS:
        assert name in SETTINGS, name
    for field, setting in api.POOL_SETTINGS.items():
        kind = SETTINGS[setting].kind
        annotation = api.PoolSpec.model_fields[setting].annotation
        assert kind in ("int", "float_seconds"), setting
        assert ("float" in str(annotation)) == (kind == "float_seconds"), (field, kind, annotation)


def test_problems_name_the_field_in_camel_case():
    problems = api.spec_problems(_with("pool.defaultPoolSize", 0)["spec"])
    assert problems == ["spec.pool.defaultPoolSize: Input should be greater than or equal to 1"]
