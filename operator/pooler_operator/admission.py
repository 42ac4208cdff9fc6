"""The webhook's answer to an AdmissionReview, as a pure function of the review and a PostgresPooler lookup.

Every pod is allowed (the webhook only ever adds a sidecar): an injectable pod gets a JSON patch, a refused
one gets its reason as a warning (kubectl prints it) and, for the server to post, as a Warning Event. A pod
without the annotation is answered silently. Only a request that is not an AdmissionReview of a pod is
refused, with 400 and what is wrong with it: the API server then applies failurePolicy (Ignore).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Callable

from .api import InvalidSpec, PostgresPooler, parse_pooler
from .inject import pooler_refusal, refusal, requested, sidecar_patch
from .objects import pooler_image

REVIEW_API_VERSION = "admission.k8s.io/v1"
WARNING_PREFIX = "maitred: "

Lookup = Callable[[str, str], dict[str, Any] | None]
"""(namespace, name) → the PostgresPooler's body, None when there is none; may raise (an API error)."""


class BadReview(ValueError):
    """The request is not an AdmissionReview v1 of a pod: answered 400 with this message."""


@dataclass(frozen=True)
class Refused:
    """A pod asked for a pooler and was left as it is: what the Warning Event says, and on what."""

    reason: str
    namespace: str
    pod: str
    pooler: dict[str, Any] | None    # the PostgresPooler's body when it exists (the Event goes on it)


@dataclass(frozen=True)
class Answer:
    status: int                      # HTTP status of the answer
    body: dict[str, Any] | str       # the AdmissionReview, or the message of a 400
    refused: Refused | None = None   # set when an Event should be posted (never for a dry run)


def parse_review(data: Any) -> dict[str, Any]:
    """The review's request; BadReview says what is wrong with it."""
    if not isinstance(data, dict):
        raise BadReview("the body is not a JSON object")
    if data.get("apiVersion") != REVIEW_API_VERSION or data.get("kind") != "AdmissionReview":
        raise BadReview(f"expected kind AdmissionReview of apiVersion {REVIEW_API_VERSION}, got kind "
                        f"{data.get('kind')!r} of apiVersion {data.get('apiVersion')!r}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise BadReview("the AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("the request has no uid")
    if request.get("operation") == "CREATE" and (request.get("kind") or {}).get("kind") == "Pod" \
            and not isinstance(request.get("object"), dict):
        raise BadReview("the request creates a Pod but carries no object")
    return request


def pod_label(pod: dict[str, Any], request: dict[str, Any]) -> str:
    """The pod's name for messages: at CREATE a pod made by a controller has only its generateName."""
    meta = pod.get("metadata") or {}
    return request.get("name") or meta.get("name") or f"{meta.get('generateName', '')}<generated>"


def review(data: Any, lookup: Lookup, image: str) -> Answer:
    """The answer to one AdmissionReview: allowed always, with a patch when the pod is injected."""
    try:
        return _review(parse_review(data), lookup, image)
    except BadReview as exc:
        return Answer(400, str(exc))
    except (AttributeError, TypeError, KeyError) as exc:  # a pod no API server would send
        return Answer(400, f"the request's object is not a Pod: {type(exc).__name__}: {exc}")


def _review(request: dict[str, Any], lookup: Lookup, image: str) -> Answer:
    uid = request["uid"]
    pod = request.get("object")
    if request.get("operation") != "CREATE" or (request.get("kind") or {}).get("kind") != "Pod" \
            or requested(pod) is None:
        return Answer(200, _response(uid))
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    name = requested(pod)
    body, why = None, refusal(pod, namespace)
    if why is None:
        name = name.strip()
        try:
            body = lookup(namespace, name)
            pooler = parse_pooler(body) if body is not None else None
        except InvalidSpec as exc:
            pooler, why = None, f"PostgresPooler {name!r} is invalid: {exc}"
        except Exception as exc:  # the API server could not be read: the pod goes on without the sidecar
            pooler, why = None, f"PostgresPooler {name!r} could not be read: {exc}"
        why = why or pooler_refusal(pooler, name, namespace)
    if why is not None:
        refused = None if request.get("dryRun") else Refused(why, namespace, pod_label(pod, request), body)
        return Answer(200, _response(uid, warnings=[WARNING_PREFIX + why]), refused)
    assert isinstance(pooler, PostgresPooler)
    patch = sidecar_patch(pod, pooler, pooler_image(pooler, image))
    return Answer(200, _response(uid, patch=patch))


def _response(uid: str, patch: list[dict[str, Any]] | None = None,
              warnings: list[str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}


def refusal_event(refused: Refused, now: str, component: str) -> dict[str, Any]:
    """The Warning Event of a refusal: on the PostgresPooler when there is one, else in the pod's namespace
    naming the pod (which may not exist yet: it is being created)."""
    if refused.pooler is not None:
        meta = refused.pooler["metadata"]
        involved = {"apiVersion": refused.pooler.get("apiVersion"), "kind": refused.pooler.get("kind"),
                    "namespace": refused.namespace, "name": meta["name"], "uid": meta.get("uid")}
        message = f"pod {refused.pod} not injected: {refused.reason}"
    else:
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": refused.namespace, "name": refused.pod}
        message = f"not injected: {refused.reason}"
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": "maitred-injection-", "namespace": refused.namespace},
            "involvedObject": {k: v for k, v in involved.items() if v}, "type": "Warning",
            "reason": "SidecarNotInjected", "message": message[:1000], "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}
