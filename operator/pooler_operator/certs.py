"""The webhook's certificates when the operator manages them: a CA (its PEM is the caBundle the API server
trusts) and a serving certificate it signs for the webhook's names, kept in a Secret of the operator's own.

`renewal` decides what to make again (pure, from the PEM texts, the names and the time); `make_ca` and
`make_serving` make it. The CA lives ten years and the serving certificate one; the serving certificate is
made again when less than 30 days remain, or when the names it must carry change.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
# The keys of the Secret: kubernetes.io/tls's two, plus the CA (cert-manager's names).
CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"


@dataclass(frozen=True)
class Renewal:
    ca: bool         # make a new CA (and so a new serving certificate)
    serving: bool    # make a new serving certificate
    reason: str


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use for a Service."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def renewal(files: dict[str, str], names: list[str], now: dt.datetime) -> Renewal | None:
    """What must be made again for a Secret holding `files`, so that the webhook is served for `names`;
    None when all is well."""
    if not all(files.get(k) for k in (CA_CERT, CA_KEY)):
        return Renewal(True, True, "no CA yet")
    try:
        ca = x509.load_pem_x509_certificate(files[CA_CERT].encode())
    except ValueError:
        return Renewal(True, True, "the CA certificate does not parse")
    if ca.not_valid_after_utc - now < RENEW_BEFORE:
        return Renewal(True, True, f"the CA expires on {ca.not_valid_after_utc:%Y-%m-%d}")
    if not all(files.get(k) for k in (TLS_CERT, TLS_KEY)):
        return Renewal(False, True, "no serving certificate yet")
    try:
        serving = x509.load_pem_x509_certificate(files[TLS_CERT].encode())
    except ValueError:
        return Renewal(False, True, "the serving certificate does not parse")
    if not _signed_by(serving, ca):
        return Renewal(False, True, "the serving certificate is not signed by the CA")
    left = serving.not_valid_after_utc - now
    if left < RENEW_BEFORE:
        return Renewal(False, True, f"the serving certificate expires on {serving.not_valid_after_utc:%Y-%m-%d} "
                                    f"(less than {RENEW_BEFORE.days} days left)")
    if sorted(certificate_names(files[TLS_CERT])) != sorted(names):
        return Renewal(False, True, f"the serving certificate is for {certificate_names(files[TLS_CERT])}, "
                                    f"not {names}")
    return None


def renewed(files: dict[str, str], names: list[str], now: dt.datetime) -> tuple[dict[str, str], Renewal | None]:
    """The Secret's files after the renewal it needs (the same files when it needs none)."""
    decision = renewal(files, names, now)
    if decision is None:
        return files, None
    out = dict(files)
    if decision.ca:
        out[CA_CERT], out[CA_KEY] = make_ca(now)
    out[TLS_CERT], out[TLS_KEY] = make_serving(out[CA_CERT], out[CA_KEY], names, now)
    return out, decision


def certificate_names(pem: str) -> list[str]:
    """The subjectAltNames of a certificate, DNS names and IP addresses alike, as text."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]


def not_after(pem: str) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def make_ca(now: dt.datetime) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maitred webhook CA")])
    cert = (_builder(name, name, key, now, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return _pem(cert), _key_pem(key)


def make_serving(ca_pem: str, ca_key_pem: str, names: list[str], now: dt.datetime) -> tuple[str, str]:
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (_builder(subject, ca.subject, key, now, SERVING_DAYS)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _pem(cert), _key_pem(key)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: dt.datetime,
             days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
