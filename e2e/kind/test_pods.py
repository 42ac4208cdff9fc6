"""The chart's operator in the kind cluster set up by e2e/kind/run.sh becomes ready. Skipped elsewhere (marker
`kind`). The pooler's pods are tested by e2e/test_pods.py, on kind as on the local node."""

from __future__ import annotations

import os

import pytest
from kubernetes import client

from maitred.local.controlplane import wait_for

pytestmark = pytest.mark.kind


def _ready(pod: client.V1Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def test_the_charts_operator_pods_become_ready(api_client):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    release_namespace = os.environ.get("MAITRED_E2E_NAMESPACE", "maitred-system")

    deployments = apps.list_namespaced_deployment(release_namespace).items
    assert deployments, f"the chart installed no Deployment in {release_namespace}"
    for deployment in deployments:
        wait_for(
            lambda: (apps.read_namespaced_deployment(deployment.metadata.name, release_namespace)
                     .status.available_replicas or 0) >= (deployment.spec.replicas or 1),
            timeout=180, what=f"Deployment {deployment.metadata.name} to be available",
        )
    pods = core.list_namespaced_pod(release_namespace).items
    assert pods and all(_ready(p) for p in pods if p.metadata.deletion_timestamp is None)
