"""Fixtures for the end-to-end suites.

By default one local control plane (etcd + kube-apiserver + kube-controller-manager, see
controlplane.py) is started per test session. With MAITRED_E2E_KUBECONFIG set, the tests run against
that cluster instead (the kind suite, e2e/kind/run.sh), and only then do tests marked `kind` run.

Fixtures:
    control_plane   session: a controlplane.Cluster with .kubeconfig (path), .server (URL),
                    .api_client() (a new kubernetes.client.ApiClient), .env() (os.environ plus
                    KUBECONFIG, for subprocesses such as kubectl, helm or `maitred operator`) and
                    .kubectl(*args).
    api_client      function: a kubernetes.client.ApiClient for control_plane, closed afterwards.
    namespace       function: the name of a fresh namespace, deleted afterwards.
    kube_env        function: KUBECONFIG set in os.environ for the test, so in-process clients
                    (kopf.testing.KopfRunner, kubernetes.config.load_kube_config()) find the cluster.
    helm            session: path of the helm binary.

Missing binaries are built with e2e/build-binaries.sh before the first test (long once, cached
after). When they cannot be had, the tests skip, or fail when CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from maitred.local.controlplane import (
    CONTROL_PLANE_BINARIES,
    BinariesMissing,
    Cluster,
    ControlPlane,
    build_binaries,
    find_binaries,
    wait_for,
)
from tests.support import missing

KIND_KUBECONFIG = os.environ.get("MAITRED_E2E_KUBECONFIG")


class _prepared:
    """Outcome of the binary lookup done once before the first test."""

    binaries: dict[str, Path] = {}
    error: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_control_plane: needs the local control plane (skipped in the kind suite)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "kind" in item.keywords and not KIND_KUBECONFIG:
            item.add_marker(pytest.mark.skip(reason="needs real pods: runs in the kind suite only"))
        if "local_control_plane" in item.keywords and KIND_KUBECONFIG:
            item.add_marker(pytest.mark.skip(reason="needs the local control plane"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Find (or build, once) the binaries before any test runs, outside the per-test timeout."""
    if KIND_KUBECONFIG or session.config.option.collectonly:
        return
    used = set()
    for item in session.items:
        if not item.get_closest_marker("skip"):
            used |= {"control_plane", "helm"} & set(getattr(item, "fixturenames", ()))
    if not used:
        return
    names = CONTROL_PLANE_BINARIES + (("helm",) if "helm" in used else ())
    try:
        _prepared.binaries = find_binaries(names=names)
        return
    except BinariesMissing as exc:
        missing = exc
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        _prepared.error = f"{missing}; no Go toolchain to build them (set $GO or install Go)"
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    if reporter:
        reporter.write_line("e2e: building the control-plane binaries (once; cached afterwards)")
    try:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            build_binaries()
        _prepared.binaries = find_binaries(names=names)
    except BinariesMissing as exc:
        _prepared.error = str(exc)


@pytest.fixture(scope="session")
def control_plane():
    """The cluster under test: a local control plane started once per session, or the kind cluster
    named by MAITRED_E2E_KUBECONFIG. See controlplane.Cluster for its API."""
    if KIND_KUBECONFIG:
        yield Cluster.from_kubeconfig(KIND_KUBECONFIG)
        return
    if _prepared.error:
        missing(_prepared.error)
    try:
        binaries = _prepared.binaries or find_binaries()
    except BinariesMissing as exc:
        missing(str(exc))
    cp = ControlPlane.start(binaries)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def api_client(control_plane):
    """A kubernetes.client.ApiClient for the cluster under test, closed after the test."""
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(request, control_plane, api_client):
    """A fresh namespace named after the test; deleted (in the background) after it.

    Yields once the namespace's `default` ServiceAccount exists, so Pods can be admitted at once.
    """
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=30, what=f"the default ServiceAccount in {name}",
        )
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def kube_env(control_plane, monkeypatch):
    """KUBECONFIG in os.environ for the duration of the test (for kopf and load_kube_config())."""
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def helm() -> Path:
    """Path of the helm binary: $KUBEBUILDER_ASSETS, the build cache, then $PATH."""
    if "helm" in _prepared.binaries:
        return _prepared.binaries["helm"]
    try:
        return find_binaries(names=("helm",))["helm"]
    except BinariesMissing as exc:
        on_path = shutil.which("helm")
        if on_path:
            return Path(on_path)
        missing(_prepared.error or str(exc))
