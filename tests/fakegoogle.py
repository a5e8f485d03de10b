"""
A fake GCE metadata server and a fake IAM Credentials API, served by the
tests on loopback with Twisted: what keyless credentials talk to.

The metadata server answers the default service account's ``token`` (a
new token each time, with the lifetime the test sets) and ``email``, and
only to requests carrying ``Metadata-Flavor: Google``, as the real one.
The IAM API's ``signBlob`` checks the bearer token against those the
metadata server handed out and signs the payload with the dummy key of
the signing conformance vectors (RSA PKCS#1 v1.5, SHA-256), so a test
can verify the signature; it records every call.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from attrs import Factory, define
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from nixeryd.storage.gcs.signing import ServiceAccountKey, rsa_sha256_sign

#: The e-mail of the metadata server's default account.
DEFAULT_ACCOUNT = "nixeryd-runner@test-project.iam.gserviceaccount.com"
TOKEN_PATH = b"/computeMetadata/v1/instance/service-accounts/default/token"
EMAIL_PATH = b"/computeMetadata/v1/instance/service-accounts/default/email"


@define
class SignCall:
    """One ``signBlob`` call: the account in its path, its token, the payload and the answer."""

    account: str
    token: str
    payload: bytes
    signature: bytes


@define
class FakeGoogle:
    """
    What the fake servers did, and how they behave.

    :ivar key: signs the payloads.
    :ivar lifetime: the ``expires_in`` of each token handed out.
    :ivar tokens: the tokens handed out, in order.
    :ivar signed: every ``signBlob`` call.
    :ivar refused: requests refused (no ``Metadata-Flavor``, a bad token,
        a forbidden account).
    """

    key: ServiceAccountKey
    lifetime: int = 3600
    tokens: list[str] = Factory(list)
    emails_asked: int = 0
    signed: list[SignCall] = Factory(list)
    refused: list[str] = Factory(list)
    #: Accounts ``signBlob`` refuses to sign for (403, as for a caller
    #: without ``iam.serviceAccounts.signBlob`` on them).
    forbidden: set[str] = Factory(set)


class _Metadata(Resource):
    isLeaf = True

    def __init__(self, state: FakeGoogle) -> None:
        super().__init__()
        self.state = state

    def render_GET(self, request: Request) -> bytes:
        if request.getHeader("Metadata-Flavor") != "Google":
            self.state.refused.append("metadata without Metadata-Flavor")
            request.setResponseCode(403)
            return b"Missing Metadata-Flavor:Google header."
        if request.path == TOKEN_PATH:
            token = "ya29.fake-%d" % (len(self.state.tokens) + 1,)
            self.state.tokens.append(token)
            request.setHeader("Content-Type", "application/json")
            return json.dumps({"access_token": token, "expires_in": self.state.lifetime,
                               "token_type": "Bearer"}).encode()
        if request.path == EMAIL_PATH:
            self.state.emails_asked += 1
            return DEFAULT_ACCOUNT.encode()
        request.setResponseCode(404)
        return b"not found"


class _IAM(Resource):
    isLeaf = True

    def __init__(self, state: FakeGoogle) -> None:
        super().__init__()
        self.state = state

    def render_POST(self, request: Request) -> bytes:
        path = request.path.decode()
        prefix, suffix = "/iam/v1/projects/-/serviceAccounts/", ":signBlob"
        if not (path.startswith(prefix) and path.endswith(suffix)):
            request.setResponseCode(404)
            return b"{}"
        account = path[len(prefix):-len(suffix)]
        authorization = request.getHeader("Authorization") or ""
        token = authorization[len("Bearer "):]
        if not authorization.startswith("Bearer ") or token not in self.state.tokens:
            self.state.refused.append("signBlob with token %r" % (token,))
            request.setResponseCode(401)
            return b'{"error": {"code": 401}}'
        if account in self.state.forbidden:
            self.state.refused.append("signBlob for %s" % (account,))
            request.setResponseCode(403)
            return json.dumps({"error": {"code": 403, "message": "Permission"
                               " 'iam.serviceAccounts.signBlob' denied on resource (or it may"
                               " not exist).", "status": "PERMISSION_DENIED"}}).encode()
        assert request.content is not None
        body: Any = json.loads(request.content.read())
        payload = base64.b64decode(body["payload"])
        signature = rsa_sha256_sign(self.state.key.private_key, payload)
        self.state.signed.append(SignCall(account, token, payload, signature))
        request.setHeader("Content-Type", "application/json")
        return json.dumps({"keyId": "fake-key-1", "signedBlob": base64.b64encode(
            signature).decode()}).encode()


async def serve_fake_google(reactor: IReactorTCP, key: ServiceAccountKey
                            ) -> tuple[FakeGoogle, str, str, IListeningPort]:
    """
    Start both fakes on one loopback port: the state, the metadata host
    (``127.0.0.1:<port>``), the IAM endpoint (``http://127.0.0.1:<port>/iam``)
    and the port to stop.
    """
    state = FakeGoogle(key)
    root = Resource()
    root.putChild(b"computeMetadata", _Metadata(state))
    iam = Resource()
    iam.putChild(b"v1", _IAM(state))
    root.putChild(b"iam", iam)
    port: IListeningPort = await TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1").listen(Site(root))
    number = port.getHost().port  # type: ignore[attr-defined]
    return state, "127.0.0.1:%d" % (number,), "http://127.0.0.1:%d/iam" % (number,), port
