"""The webhook's certificates: when they are made again (pure), and the running server over real TLS: it
serves the certificate of its Secret, a renewal reaches new handshakes without a restart, and the caBundle
of the configuration follows the CA. The API server is an in-memory stand-in with Kube's methods."""
from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import ssl

import aiohttp
import pytest

from maitred.local.postgres import free_port
from pooler_operator import certs
from pooler_operator.kube import ApiError
from pooler_operator.webhook_config import CONFIGURATION_NAME, current_ca, service_client_config, webhook_configuration
from pooler_operator.webhook_server import CONFIGURATION, WebhookOptions, WebhookServer

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
NAMES = ["maitred-webhook", "maitred-webhook.maitred-system", "maitred-webhook.maitred-system.svc",
         "maitred-webhook.maitred-system.svc.cluster.local"]


@pytest.fixture(scope="module")
def issued() -> dict[str, str]:
    files, decision = certs.renewed({}, NAMES, NOW)
    assert decision.ca and decision.serving and decision.reason == "no CA yet"
    return files


def test_fresh_certificates_need_nothing_until_30_days_before_the_serving_one_expires(issued):
    assert certs.renewal(issued, NAMES, NOW) is None
    assert certs.renewal(issued, NAMES, NOW + dt.timedelta(days=334)) is None
    later = certs.renewal(issued, NAMES, NOW + dt.timedelta(days=336))
    assert later == certs.Renewal(ca=False, serving=True, reason=later.reason) and "less than 30 days" in later.reason


def test_a_renewed_serving_certificate_keeps_the_ca_and_is_signed_by_it(issued):
    files, decision = certs.renewed(issued, NAMES, NOW + dt.timedelta(days=340))
    assert decision.serving and not decision.ca
    assert files[certs.CA_CERT] == issued[certs.CA_CERT] and files[certs.TLS_CERT] != issued[certs.TLS_CERT]
    assert certs.renewal(files, NAMES, NOW + dt.timedelta(days=340)) is None
    assert certs.not_after(files[certs.TLS_CERT]) > certs.not_after(issued[certs.TLS_CERT])


def test_new_names_a_foreign_serving_certificate_or_an_expiring_ca_mean_new_certificates(issued):
    assert "not ['127.0.0.1']" in certs.renewal(issued, ["127.0.0.1"], NOW).reason
    other, _ = certs.renewed({}, NAMES, NOW)
    foreign = {**issued, certs.TLS_CERT: other[certs.TLS_CERT], certs.TLS_KEY: other[certs.TLS_KEY]}
    assert certs.renewal(foreign, NAMES, NOW).reason == "the serving certificate is not signed by the CA"
    ca_ending = certs.renewal(issued, NAMES, NOW + dt.timedelta(days=certs.CA_DAYS - 10))
    assert ca_ending.ca and "the CA expires" in ca_ending.reason
    assert certs.renewal({**issued, certs.CA_CERT: "garbage"}, NAMES, NOW).ca


def test_ip_addresses_are_ip_names(issued):
    files, _ = certs.renewed({}, ["127.0.0.1", "localhost"], NOW)
    assert certs.certificate_names(files[certs.TLS_CERT]) == ["localhost", "127.0.0.1"]


# -- the server ---------------------------------------------------------------------------------------------


class MemoryKube:
    """Kube's methods the webhook server calls, over a dict; resourceVersions checked as the API server does."""

    def __init__(self):
        self.objects: dict[tuple, dict] = {}
        self.version = 0
        self.patches: list[dict] = []

    def _key(self, api_version, kind, namespace, name):
        return (api_version, kind, namespace, name)

    def _store(self, obj):
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        meta = obj["metadata"]
        self.objects[self._key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])] = obj
        return obj

    def get(self, api_version, kind, namespace, name):
        return copy.deepcopy(self.objects.get(self._key(api_version, kind, namespace, name)))

    def create(self, manifest):
        meta = manifest["metadata"]
        if self._key(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]) in self.objects:
            raise ApiError(409, "already exists", "AlreadyExists")
        return self._store(manifest)

    def replace(self, manifest):
        meta = manifest["metadata"]
        live = self.objects[self._key(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])]
        if live["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise ApiError(409, "the object has been modified", "Conflict")
        return self._store(manifest)

    def patch(self, api_version, kind, namespace, name, body, content_type=""):
        self.patches.append(body)
        obj = self.objects[self._key(api_version, kind, namespace, name)]
        obj["webhooks"][0]["clientConfig"]["caBundle"] = body["webhooks"][0]["clientConfig"]["caBundle"]
        return obj

    def secret_files(self):
        secret = self.get("v1", "Secret", "maitred-system", "maitred-webhook-tls")
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


async def served_certificate(port: int, ca: str) -> tuple[str, dict]:
    """The serving certificate's notAfter as a client verifying against `ca` sees it, and an answer."""
    context = ssl.create_default_context(cadata=ca)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=NAMES[2])
    not_after = writer.get_extra_info("peercert")["notAfter"]
    writer.close()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://127.0.0.1:{port}/mutate", ssl=context, server_hostname=NAMES[2],
                                json={"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                      "request": {"uid": "1", "operation": "DELETE", "object": None}}) as r:
            return not_after, {"status": r.status, "body": await r.json()}


def test_the_server_serves_its_secrets_certificate_renews_it_live_and_keeps_the_ca_bundle():
    async def scenario():
        kube = MemoryKube()
        kube._store(webhook_configuration(service_client_config("maitred-system", "maitred-webhook", 443)))
        # Made 340 days ago, so that the client (on real time) accepts both it and its renewal.
        now = dt.datetime.now(dt.timezone.utc)
        clock = {"now": now - dt.timedelta(days=340)}
        port = free_port()
        server = WebhookServer(WebhookOptions(port=port, host="127.0.0.1", service="maitred-webhook",
                                              namespace="maitred-system"),
                               kube=lambda: kube, image=lambda: "maitred:1", clock=lambda: clock["now"])
        await server.start()
        try:
            files = kube.secret_files()
            assert sorted(files) == [certs.CA_CERT, certs.CA_KEY, certs.TLS_CERT, certs.TLS_KEY]
            live = kube.get(*CONFIGURATION, None, CONFIGURATION_NAME)
            assert current_ca(live) == files[certs.CA_CERT]
            before, answer = await served_certificate(port, files[certs.CA_CERT])
            assert answer == {"status": 200, "body": {"apiVersion": "admission.k8s.io/v1",
                                                      "kind": "AdmissionReview",
                                                      "response": {"uid": "1", "allowed": True}}}
            clock["now"] = now
            await server.check()
            after, _ = await served_certificate(port, files[certs.CA_CERT])
            assert before != after and kube.secret_files()[certs.CA_CERT] == files[certs.CA_CERT]
            assert len(kube.patches) == 1, "the CA did not change: the caBundle is not patched again"
        finally:
            await server.stop()
        # A restarted operator reuses the Secret: same CA, same serving certificate.
        again = WebhookServer(server.options, kube=lambda: kube, image=lambda: "maitred:1",
                              clock=lambda: clock["now"])
        await again.start()
        try:
            assert again.files == kube.secret_files()
            status, body = await bad_request(port, again.files[certs.CA_CERT])
            assert status == 400 and "not JSON" in body
        finally:
            await again.stop()
    asyncio.run(scenario())


async def bad_request(port: int, ca: str) -> tuple[int, str]:
    context = ssl.create_default_context(cadata=ca)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://127.0.0.1:{port}/mutate", ssl=context, server_hostname=NAMES[2],
                                data=b"{not json") as r:
            return r.status, await r.text()


def test_a_secret_written_by_another_replica_first_is_used_as_it_is():
    theirs, _ = certs.renewed({}, NAMES, NOW)

    class Racing(MemoryKube):
        """Another replica creates the Secret between this one's read and its create."""

        def create(self, manifest):
            if not self.objects:
                super().create({**manifest, "data": {k: base64.b64encode(v.encode()).decode()
                                                     for k, v in theirs.items()}})
            return super().create(manifest)
    kube = Racing()
    server = WebhookServer(WebhookOptions(port=0, service="maitred-webhook", namespace="maitred-system"),
                           kube=lambda: kube, image=lambda: "maitred:1", clock=lambda: NOW)
    assert server._managed_certificates() == theirs == kube.secret_files()


def test_the_secret_is_owned_by_the_webhook_service_so_that_removing_the_service_removes_it():
    kube = MemoryKube()
    kube._store({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "maitred-webhook", "namespace": "maitred-system", "uid": "u-1"}})
    server = WebhookServer(WebhookOptions(port=0, service="maitred-webhook", namespace="maitred-system"),
                           kube=lambda: kube, image=lambda: "maitred:1", clock=lambda: NOW)
    server._managed_certificates()
    secret = kube.get("v1", "Secret", "maitred-system", "maitred-webhook-tls")
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "maitred-webhook", "uid": "u-1"}]

    unowned = MemoryKube()      # --webhook-url: no Service to belong to
    WebhookServer(WebhookOptions(port=0, url="https://127.0.0.1:9443/mutate", namespace="maitred-system"),
                  kube=lambda: unowned, image=lambda: "maitred:1", clock=lambda: NOW)._managed_certificates()
    assert "ownerReferences" not in unowned.get("v1", "Secret", "maitred-system", "maitred-webhook-tls")["metadata"]
