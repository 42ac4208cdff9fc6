"""The injection webhook's answers, its Events and its configuration: pure functions of an AdmissionReview (as
the API server sends it) and a PostgresPooler lookup. The patch in an answer is applied with a real JSON
patch implementation; e2e/test_webhook.py has the API server itself call the operator."""
from __future__ import annotations

import base64
import copy
import json

import jsonpatch
import pytest

from pooler_operator.admission import Refused, refusal_event, review
from pooler_operator.inject import (INJECT_ANNOTATION, INJECTED_ANNOTATION, MISSED, NAMESPACE_LABEL, SIDECAR_NAME,
                                    missed_injection)
from pooler_operator.kube import ApiError
from pooler_operator.webhook_config import (CONFIGURATION_NAME, WEBHOOK_NAME, ca_bundle_patch, current_ca,
                                            service_client_config, url_client_config, webhook_configuration)
from tests.test_inject import WEB, pooler

IMAGE = "registry.example/maitred:1.0"


def body(mode: str = "sidecar", **spec) -> dict:
    return pooler(mode, **spec).model_dump(by_alias=True, exclude_none=True) | {
        "apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler"}


def admission(pod: dict, *, namespace: str = "shop", operation: str = "CREATE", dry_run: bool = False) -> dict:
    """An AdmissionReview as kube-apiserver sends it for a pod."""
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                        "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "operation": operation, "userInfo": {"username": "admin"},
                        "object": pod, "oldObject": None, "dryRun": dry_run}}


def lookup_of(*bodies: dict):
    found = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}
    return lambda namespace, name: found.get((namespace, name))


def patched(answer) -> dict:
    response = answer.body["response"]
    assert response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(WEB, json.loads(base64.b64decode(response["patch"])))


def test_an_annotated_pod_is_allowed_with_the_sidecar_patch():
    answer = review(admission(WEB), lookup_of(body()), IMAGE)
    assert answer.status == 200 and answer.refused is None
    response = answer.body["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002" and response["allowed"] is True
    assert "warnings" not in response
    pod = patched(answer)
    assert pod["spec"]["initContainers"][0]["name"] == SIDECAR_NAME
    assert pod["spec"]["initContainers"][0]["image"] == IMAGE
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "web"


def test_the_poolers_own_image_wins_over_the_operators():
    answer = review(admission(WEB), lookup_of(body(pooler={"image": "mine/maitred:2"})), IMAGE)
    assert patched(answer)["spec"]["initContainers"][0]["image"] == "mine/maitred:2"


@pytest.mark.parametrize("pod, poolers, why", [
    (WEB, (), "no PostgresPooler 'web' in namespace shop"),
    (WEB, (body("deployment"),), "runs in mode deployment"),
    ({**WEB, "metadata": {**WEB["metadata"], "annotations": {INJECT_ANNOTATION: "Web DB"}}}, (body(),),
     "'Web DB' is not a PostgresPooler name"),
], ids=["unknown-pooler", "deployment-mode", "bad-annotation"])
def test_a_refused_pod_is_allowed_unpatched_with_a_warning_and_an_event(pod, poolers, why):
    answer = review(admission(pod), lookup_of(*poolers), IMAGE)
    response = answer.body["response"]
    assert answer.status == 200 and response["allowed"] is True and "patch" not in response
    (warning,) = response["warnings"]
    assert warning.startswith("maitred: ") and why in warning
    assert answer.refused.reason in warning and answer.refused.pod == "web-7d9f"


def test_a_pooler_that_cannot_be_read_is_a_refusal_not_an_error():
    def forbidden(namespace, name):
        raise ApiError(403, 'postgrespoolers.maitred.dev "web" is forbidden', "Forbidden")
    answer = review(admission(WEB), forbidden, IMAGE)
    assert answer.status == 200 and "could not be read: 403" in answer.body["response"]["warnings"][0]


def test_an_unannotated_pod_is_allowed_silently():
    pod = {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}
    answer = review(admission(pod), lookup_of(body()), IMAGE)
    assert answer.status == 200 and answer.refused is None
    assert answer.body["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


def test_a_dry_run_is_answered_but_posts_no_event():
    answer = review(admission(WEB, dry_run=True), lookup_of(), IMAGE)
    assert answer.body["response"]["warnings"] and answer.refused is None


def test_other_operations_are_allowed_untouched():
    answer = review(admission(WEB, operation="UPDATE"), lookup_of(body()), IMAGE)
    assert answer.status == 200 and "patch" not in answer.body["response"]


@pytest.mark.parametrize("data, message", [
    ([], "not a JSON object"),
    ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}, "admission.k8s.io/v1"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "has no request"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}},
     "has no uid"),
    (admission("not a pod"), "carries no object"),
    (admission({**WEB, "spec": {"containers": "app"}}), "the request's object is not a Pod"),
], ids=["array", "v1beta1", "no-request", "no-uid", "no-object", "not-a-pod"])
def test_a_malformed_review_is_a_400_that_says_what_is_wrong(data, message):
    answer = review(data, lookup_of(body()), IMAGE)
    assert answer.status == 400 and message in answer.body and answer.refused is None


def test_a_refusal_event_goes_on_the_pooler_when_it_exists_else_names_the_pod():
    on_pooler = refusal_event(Refused("runs in mode deployment", "shop", "web-7d9f", body("deployment")),
                              "2026-01-01T00:00:00Z", "maitred-operator")
    assert on_pooler["involvedObject"] == {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
                                           "namespace": "shop", "name": "web", "uid": "u1"}
    assert on_pooler["type"] == "Warning" and on_pooler["reason"] == "SidecarNotInjected"
    assert on_pooler["message"] == "pod web-7d9f not injected: runs in mode deployment"
    on_pod = refusal_event(Refused("no PostgresPooler 'db'", "shop", "web-<generated>", None),
                           "2026-01-01T00:00:00Z", "maitred-operator")
    assert on_pod["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "shop",
                                        "name": "web-<generated>"}
    assert on_pod["metadata"]["namespace"] == "shop"


# -- a pod stored without its sidecar -----------------------------------------------------------------------


OPTED_IN = {NAMESPACE_LABEL: "enabled"}


def test_a_pod_the_webhook_would_have_injected_is_reported_missed():
    assert missed_injection(WEB, "shop", OPTED_IN, pooler()) == MISSED
    assert "delete the pod to have it injected" in MISSED


@pytest.mark.parametrize("pod, labels, mode", [
    (WEB, {}, "sidecar"),                                            # the namespace did not opt in
    (WEB, OPTED_IN, "deployment"),                                   # refused at creation, and told so
    ({**WEB, "metadata": {**WEB["metadata"], "annotations": {**WEB["metadata"]["annotations"],
                                                              INJECTED_ANNOTATION: "web"}}}, OPTED_IN, "sidecar"),
    ({**WEB, "metadata": {**WEB["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}, OPTED_IN, "sidecar"),
], ids=["not-opted-in", "refused", "injected", "terminating"])
def test_pods_that_are_as_they_should_be_are_not_reported(pod, labels, mode):
    assert missed_injection(copy.deepcopy(pod), "shop", labels, pooler(mode)) is None


# -- the MutatingWebhookConfiguration -----------------------------------------------------------------------


CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_configuration_sends_only_pod_creation_from_opted_in_namespaces_and_never_blocks():
    config = webhook_configuration(url_client_config("https://127.0.0.1:9443/mutate"), CA)
    assert config["metadata"]["name"] == CONFIGURATION_NAME == "maitred-sidecar-injector"
    (hook,) = config["webhooks"]
    assert hook["name"] == WEBHOOK_NAME
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == ("Ignore", "None", 5)
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "maitred.dev/injection", "operator": "In", "values": ["enabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["kube-node-lease", "kube-public", "kube-system"]}]
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["maitred"]}]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate"
    assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == CA


def test_the_configuration_may_call_a_service_and_its_ca_bundle_is_patched_alone():
    config = webhook_configuration(service_client_config("maitred-system", "maitred-webhook", 443))
    hook = config["webhooks"][0]
    assert hook["clientConfig"] == {"service": {"namespace": "maitred-system", "name": "maitred-webhook",
                                                "port": 443, "path": "/mutate"}}
    assert current_ca(config) is None
    merged = copy.deepcopy(config)
    merged["webhooks"][0]["clientConfig"].update(ca_bundle_patch(CA)["webhooks"][0]["clientConfig"])
    assert ca_bundle_patch(CA)["webhooks"][0]["name"] == WEBHOOK_NAME      # strategic merge: by name
    assert current_ca(merged) == CA
