"""Authentication, both ways: checking a client against the auth_file secret, and logging in to PostgreSQL.

SCRAM is done by scramp; md5 and cleartext are a line of hashing each. Secrets come in PgBouncer's three
forms: a plain password, `md5<hex>` and a SCRAM-SHA-256 verifier.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from scramp import ScramClient, ScramException, ScramMechanism

from . import protocol
from .settings import SETTINGS

SCRAM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = SETTINGS["scram_iterations"].default
_mechanism = ScramMechanism(SCRAM)


class AuthFailed(Exception):
    """The client's credentials are wrong; the message is what the client is told."""


def md5_secret(password: str, user: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def md5_response(secret_md5: str, salt: bytes) -> str:
    """The md5 client response from an `md5<hex>` secret and the server's 4-byte salt."""
    return "md5" + hashlib.md5(secret_md5[3:].encode() + salt).hexdigest()


def parse_scram_secret(secret: str) -> tuple[bytes, bytes, bytes, int]:
    """`SCRAM-SHA-256$iter:salt$stored:server` → (salt, stored_key, server_key, iterations), scramp's order."""
    try:
        head, keys = secret.split("$", 1)[1].split("$")
        iterations, salt = head.split(":")
        stored, server = keys.split(":")
        return (base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server), int(iterations))
    except (ValueError, IndexError) as exc:
        raise ValueError("malformed SCRAM secret") from exc


def secret_kind(secret: str) -> str:
    if secret.startswith("SCRAM-SHA-256$"):
        return "scram"
    if len(secret) == 35 and secret.startswith("md5"):
        return "md5"
    return "plain"


def password_matches(password: str, user: str, secret: str) -> bool:
    """Check a cleartext password against any kind of stored secret."""
    kind = secret_kind(secret)
    if kind == "plain":
        return hmac.compare_digest(password.encode(), secret.encode())
    if kind == "md5":
        return hmac.compare_digest(md5_secret(password, user), secret)
    salt, stored, server, iterations = parse_scram_secret(secret)
    _, stored2, server2, _ = _mechanism.make_auth_info(password, iteration_count=iterations, salt=salt)
    return hmac.compare_digest(stored, stored2) and hmac.compare_digest(server, server2)


_plain_scram_infos: dict[tuple[str, int], tuple] = {}


def plain_scram_info(password: str, iterations: int) -> tuple:
    """A SCRAM verifier for a plain-text auth_file password, derived once per scram_iterations and kept: PBKDF2
    with 4096 iterations costs milliseconds, and every SCRAM login of that user would otherwise pay it again."""
    key = (password, iterations)
    info = _plain_scram_infos.get(key)
    if info is None:
        if len(_plain_scram_infos) >= 4096:
            _plain_scram_infos.clear()
        info = _plain_scram_infos[key] = _mechanism.make_auth_info(password, iteration_count=iterations)
    return info


def _failed(user: str) -> AuthFailed:
    return AuthFailed(f'password authentication failed for user "{user}"')


class ClientAuth:
    """One client's authentication exchange, driven by the password messages ('p') it sends.

    `start()` gives the first request to send; `feed(body)` returns (message to send or None, done); it
    raises AuthFailed when the client is not who it claims to be. An unknown user, or one whose secret
    is empty (PgBouncer disallows empty passwords), goes through the same exchange against a made-up
    secret, so the answer does not tell which users exist. `iterations`: scram_iterations, which a plain-text
    secret is hashed with, and which the made-up secret shows too.
    """

    def __init__(self, method: str, user: str, secret: str | None, iterations: int = DEFAULT_ITERATIONS):
        self.user = user
        self.known = bool(secret)
        self.iterations = iterations
        if not secret:      # the exchange PgBouncer's mock user gets: md5 stays md5
            secret = md5_secret(os.urandom(16).hex(), user) if method == "md5" else \
                f"SCRAM-SHA-256${iterations}:" + base64.b64encode(os.urandom(16)).decode() + "$AAAA:AAAA"
        self.secret = secret
        if method == "md5" and secret_kind(self.secret) == "scram":
            method = "scram-sha-256"   # an md5 exchange cannot be checked against a SCRAM verifier
        if method == "scram-sha-256" and secret_kind(self.secret) == "md5":
            raise AuthFailed(f'SCRAM authentication requires a plain or SCRAM secret for user "{user}"')
        self.method = method
        self._salt = os.urandom(4)
        self._scram = None
        self.scram_keys: tuple[bytes, bytes] | None = None   # (ClientKey, ServerKey) once a SCRAM proof checks

    def start(self) -> bytes:
        if self.method == "plain":
            return protocol.AUTH_CLEARTEXT
        if self.method == "md5":
            return protocol.auth_md5(self._salt)
        return protocol.auth_sasl([SCRAM])

    def feed(self, body: bytes) -> tuple[bytes | None, bool]:
        if self.method == "plain":
            password = body.rstrip(b"\x00").decode(errors="replace")
            if self.known and password_matches(password, self.user, self.secret):
                return None, True
            raise _failed(self.user)
        if self.method == "md5":
            answer = body.rstrip(b"\x00").decode(errors="replace")
            if self.known and self._md5_ok(answer):
                return None, True
            raise _failed(self.user)
        return self._scram_step(body)

    def _md5_ok(self, answer: str) -> bool:
        secret = self.secret if secret_kind(self.secret) == "md5" else md5_secret(self.secret, self.user)
        return hmac.compare_digest(md5_response(secret, self._salt), answer)

    def _scram_step(self, body: bytes) -> tuple[bytes | None, bool]:
        try:
            if self._scram is None:
                mech, _, rest = body.partition(b"\x00")
                if mech.decode(errors="replace") != SCRAM:
                    raise AuthFailed("unsupported SASL mechanism " + mech.decode(errors="replace"))
                (length,) = struct.unpack_from("!i", rest)
                client_first = rest[4:4 + length].decode()
                self._scram = _mechanism.make_server(_auth_fn(self.secret, self.iterations))
                self._set_client_first(client_first)
                return protocol.auth_sasl_continue(self._scram.get_server_first().encode()), False
            self._scram.set_client_final(body.decode())
            if not self.known:
                raise _failed(self.user)
            if secret_kind(self.secret) == "scram":
                self._learn_keys(body.decode())
            return protocol.auth_sasl_final(self._scram.get_server_final().encode()), True
        except (ScramException, UnicodeDecodeError, struct.error, ValueError) as exc:
            raise _failed(self.user) from exc

    def _learn_keys(self, client_final: str) -> None:
        """ClientKey = proof XOR HMAC(StoredKey, AuthMessage): with the ServerKey, it logs in to a server
        whose secret is the same verifier (PgBouncer's SCRAM pass-through)."""
        without_proof, _, proof = client_final.rpartition(",p=")
        auth_message = f"{self._scram.client_first_bare},{self._scram.server_first},{without_proof}"
        _, stored, server_key, _ = parse_scram_secret(self.secret)
        signature = hmac.new(stored, auth_message.encode(), hashlib.sha256).digest()
        self.scram_keys = (bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature)), server_key)

    def _set_client_first(self, client_first: str) -> None:
        """libpq sends an empty SCRAM user name (`n=,`): PostgreSQL uses the startup packet's user instead.

        scramp refuses an empty name, so it is given a placeholder, and then the bare message as the client
        sent it, because the client's proof is computed over exactly those bytes.
        """
        gs2_flag, authzid, bare = client_first.split(",", 2)
        if not bare.startswith("n=,"):
            self._scram.set_client_first(client_first)
            return
        self._scram.set_client_first(f"{gs2_flag},{authzid},n=user,{bare[3:]}")
        self._scram.client_first_bare = bare


def _auth_fn(secret: str, iterations: int):
    """scramp's auth_fn for one secret. Not a method: the exchange would hold its ClientAuth and the ClientAuth the
    exchange, a reference cycle that outlives the login until a full garbage collection, in every SCRAM login."""
    info = plain_scram_info(secret, iterations) if secret_kind(secret) == "plain" else parse_scram_secret(secret)
    return lambda _username: info


class _ScramKeysClient:
    """A SCRAM client holding the keys a client's proof revealed instead of a password; scramp's interface.

    PostgreSQL accepts it only when its verifier has the same salt and iterations as the auth_file's.
    """

    def __init__(self, client_key: bytes, server_key: bytes):
        self.client_key, self.server_key = client_key, server_key
        self.client_first_bare = "n=,r=" + base64.b64encode(os.urandom(18)).decode()

    def get_client_first(self) -> str:
        return "n,," + self.client_first_bare

    def set_server_first(self, message: str) -> None:
        nonce = dict(part.split("=", 1) for part in message.split(",") if "=" in part).get("r", "")
        if not nonce.startswith(self.client_first_bare[5:]):
            raise AuthFailed("SCRAM server nonce does not extend the client's")
        self.server_first, self.nonce = message, nonce

    def get_client_final(self) -> str:
        without_proof = f"c=biws,r={self.nonce}"
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        stored_key = hashlib.sha256(self.client_key).digest()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        self.server_signature = hmac.new(self.server_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(self.client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def set_server_final(self, message: str) -> None:
        if not hmac.compare_digest(message.encode(), b"v=" + base64.b64encode(self.server_signature)):
            raise AuthFailed("the server's SCRAM signature does not match")


class ServerLogin:
    """The pooler's side of PostgreSQL's authentication requests, for one server connection."""

    def __init__(self, user: str, password: str | None, scram_keys: tuple[bytes, bytes] | None = None):
        self.user = user
        self.password = password
        self.scram_keys = scram_keys
        self._scram: ScramClient | _ScramKeysClient | None = None

    def _need_password(self) -> str:
        if self.password is None:
            raise AuthFailed(f'no password known for user "{self.user}" to log in to the server')
        return self.password

    def answer(self, code: int, payload: bytes) -> bytes | None:
        """The reply to an AuthenticationRequest, or None when none is due (Ok, SASLFinal)."""
        if code == 0:
            return None
        if code == 3:
            password = self._need_password()
            if secret_kind(password) != "plain":
                raise AuthFailed("server asks for a cleartext password but only a hashed secret is known")
            return protocol.password_message(password.encode() + b"\x00")
        if code == 5:
            password = self._need_password()
            secret = password if secret_kind(password) == "md5" else md5_secret(password, self.user)
            return protocol.password_message(md5_response(secret, payload[:4]).encode() + b"\x00")
        if code == 10:
            mechanisms = [m.decode() for m in payload.split(b"\x00") if m]
            if SCRAM not in mechanisms:
                raise AuthFailed(f"server offers no supported SASL mechanism: {mechanisms}")
            password = self._need_password()
            if secret_kind(password) == "scram" and self.scram_keys is not None:
                self._scram = _ScramKeysClient(*self.scram_keys)
            elif secret_kind(password) != "plain":
                raise AuthFailed("server asks for SCRAM but only a hashed secret is known")
            else:
                self._scram = ScramClient([SCRAM], self.user, password)
            return protocol.sasl_initial_response(SCRAM, self._scram.get_client_first().encode())
        if code == 11 and self._scram is not None:
            self._scram.set_server_first(payload.decode())
            return protocol.password_message(self._scram.get_client_final().encode())
        if code == 12 and self._scram is not None:
            self._scram.set_server_final(payload.decode())
            return None
        raise AuthFailed(f"unsupported authentication request {code} from server")
