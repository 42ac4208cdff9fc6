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
    pod_platform    session: where real pods run (a PodPlatform): the real node of maitred/local/node.py on a
                    control plane with kube-scheduler, or the kind cluster; with the image to run.

Missing binaries are built with e2e/build-binaries.sh before the first test, and the images with buildah
(maitred/local/image.py) before the first test that runs pods (long once, cached after). When they cannot
be had, the tests skip, or fail when CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from maitred.local import image, node
from maitred.local.controlplane import (
    CONTROL_PLANE_BINARIES,
    NODE_BINARIES,
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
    images: tuple[image.Image, image.Image] | None = None  # pause, maitred
    images_error: str | None = None


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
            used |= {"control_plane", "helm", "pod_platform"} & set(getattr(item, "fixturenames", ()))
    if not used:
        return
    names = CONTROL_PLANE_BINARIES + (("helm",) if "helm" in used else ())
    names += NODE_BINARIES if "pod_platform" in used else ()
    if "pod_platform" in used:
        _prepare_images(session)
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


def _prepare_images(session: pytest.Session) -> None:
    """The pause and maitred images for the node, built with buildah once (minutes on a cold cache)."""
    lacking = node.missing_parts() + [c for c in ("buildah", "debootstrap") if not shutil.which(c)]
    if lacking:
        _prepared.images_error = f"the real node needs {', '.join(lacking)} (scripts/install-deps.sh)"
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line("e2e: the base, pause and maitred images (built once with buildah; cached afterwards)")
    try:
        base = image.base_image()
        _prepared.images = (image.pause_image(base), image.maitred_image(base))
    except (image.ImageBuildFailed, OSError) as exc:
        _prepared.images_error = str(exc)


@dataclass
class PodPlatform:
    """Where the pod-level tests run.

    cluster: the API server; image: the maitred image its pods run; host: this machine's address as pods
    see it (a PostgreSQL for them listens there); pod_network: the pods' addresses, for pg_hba.conf;
    node: the local node (None in the kind suite).
    """

    cluster: Cluster
    image: str
    host: str
    pod_network: str
    node: node.Node | None = None


@pytest.fixture(scope="session")
def pod_platform():
    """The real node on its own control plane with kube-scheduler, or the kind cluster: see PodPlatform."""
    if KIND_KUBECONFIG:
        yield PodPlatform(Cluster.from_kubeconfig(KIND_KUBECONFIG), os.environ.get("MAITRED_E2E_IMAGE", "maitred:e2e"),
                          os.environ.get("MAITRED_E2E_HOST_ADDRESS", "172.18.0.1"),
                          os.environ.get("MAITRED_E2E_POD_NETWORK", "172.16.0.0/12"))
        return
    if _prepared.error or _prepared.images_error:
        missing(_prepared.error or _prepared.images_error)
    try:
        binaries = _prepared.binaries or find_binaries(names=CONTROL_PLANE_BINARIES + NODE_BINARIES)
    except BinariesMissing as exc:
        missing(str(exc))
    pause, maitred = _prepared.images
    with contextlib.ExitStack() as stack:
        cp = ControlPlane.start(binaries, scheduler=True)
        stack.callback(cp.stop)
        the_node = node.Node.start(cp, binaries["kubelet"], pause, [maitred])
        stack.callback(lambda: _stopped_clean(the_node))
        yield PodPlatform(cp, maitred.ref, the_node.gateway, str(the_node.subnet), the_node)


def _stopped_clean(the_node: node.Node) -> None:
    the_node.stop()
    left = the_node.leftovers()
    assert not left, f"the node left {left}"


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
