"""Make, cache and verify Tencent Cloud Chat UserSigs (algorithm v2)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from consumer.core.errors import TimRecallError

Clock = Callable[[], float]

_TO_URL = str.maketrans({"+": "*", "/": "-", "=": "_"})
_FROM_URL = str.maketrans({"*": "+", "-": "/", "_": "="})


class UserSigError(TimRecallError):
    """A UserSig failed verification; `code` is the REST ErrorCode the server would answer."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SigFields:
    """What a UserSig says once decoded."""

    identifier: str
    sdkappid: int
    time: int
    expire: int
    sig: str
    version: str


def _hmac(secret_key: str, identifier: str, sdkappid: int, t: int, expire: int) -> str:
    text = (
        f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{t}\nTLS.expire:{expire}\n"
    )
    digest = hmac.new(secret_key.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def make_usersig(sdkappid: int, identifier: str, secret_key: str, expire: int, now: int) -> str:
    """Make a UserSig for `identifier`, valid `expire` seconds from `now` (unix seconds)."""
    doc = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": now,
        "TLS.sig": _hmac(secret_key, identifier, sdkappid, now, expire),
    }
    packed = zlib.compress(json.dumps(doc, separators=(",", ":")).encode())
    return base64.b64encode(packed).decode().translate(_TO_URL)


def decode_usersig(usersig: str) -> SigFields:
    """Decode a UserSig without checking its HMAC; raises UserSigError (70003/70005)."""
    if not usersig:
        raise UserSigError(70002, "UserSig empty")
    try:
        raw = zlib.decompress(base64.b64decode(usersig.translate(_FROM_URL), validate=True))
        doc = json.loads(raw)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise UserSigError(70005, "UserSig cannot be parsed") from exc
    if not isinstance(doc, dict):
        raise UserSigError(70005, "UserSig cannot be parsed")
    try:
        return SigFields(
            identifier=str(doc["TLS.identifier"]),
            sdkappid=int(doc["TLS.sdkappid"]),
            time=int(doc["TLS.time"]),
            expire=int(doc["TLS.expire"]),
            sig=str(doc["TLS.sig"]),
            version=str(doc.get("TLS.ver", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserSigError(70003, "UserSig invalid: a field is missing or malformed") from exc


def verify_usersig(
    usersig: str, sdkappid: int, identifier: str, secret_key: str, now: float
) -> SigFields:
    """Check a UserSig as the server does; raises UserSigError with the server's code."""
    fields = decode_usersig(usersig)
    if fields.sdkappid != sdkappid:
        raise UserSigError(70014, "SDKAppID differs from the one signed into the UserSig")
    if fields.identifier != identifier:
        raise UserSigError(70013, "identifier differs from the one signed into the UserSig")
    expected = _hmac(secret_key, fields.identifier, fields.sdkappid, fields.time, fields.expire)
    if not hmac.compare_digest(expected, fields.sig):
        raise UserSigError(70003, "UserSig invalid: signature does not match")
    if fields.time + fields.expire < now:
        raise UserSigError(70001, "UserSig expired")
    return fields


class UserSigVerifier:
    """verify_usersig that remembers the UserSigs it passed, so a repeated one costs a look-up.

    A server sees the same UserSig on every call until the client renews it (a day), and
    decoding it (base64, zlib, JSON) and its HMAC cost more than the rest of a call's checks.
    Remembered: the fields of a UserSig that decoded, matched the SDKAppID and identifier and
    whose HMAC matched, keyed by all four inputs those depend on (a new key simply misses).
    Checked on every call: time + expire against `now`, so a remembered UserSig expires exactly
    when it would unremembered. A refused UserSig is not remembered (it is checked in full again).
    """

    def __init__(self, max_size: int = 4096) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._max_size = max_size
        self._passed: dict[tuple[str, int, str, str], SigFields] = {}
        self._lock = threading.Lock()  # a sandbox can be called from more than one thread

    def verify(
        self, usersig: str, sdkappid: int, identifier: str, secret_key: str, now: float
    ) -> SigFields:
        """The same answer as verify_usersig (fields, or UserSigError with the same code)."""
        key = (usersig, sdkappid, identifier, secret_key)
        fields = self._passed.get(key)
        if fields is None:
            fields = verify_usersig(usersig, sdkappid, identifier, secret_key, now)
            with self._lock:
                if len(self._passed) >= self._max_size:  # the oldest goes; it is only checked anew
                    del self._passed[next(iter(self._passed))]
                self._passed[key] = fields
        elif fields.time + fields.expire < now:
            raise UserSigError(70001, "UserSig expired")
        return fields

    def __len__(self) -> int:
        return len(self._passed)


def _constant(value: str) -> Callable[[], str]:
    return lambda: value


class UserSigCache:
    """Holds one UserSig and makes a new one well before it expires.

    `secret_key` may be a function, read again at each renewal: a key file mounted from a
    Kubernetes Secret can then be fixed without a restart. Give it a `SecretKeySource`
    (consumer/core/secret_key.py), which never raises: an unusable file keeps the last good key.
    """

    def __init__(
        self,
        sdkappid: int,
        identifier: str,
        secret_key: str | Callable[[], str],
        *,
        expire: int = 86400,
        renew_before: int = 3600,
        clock: Clock = time.time,
    ) -> None:
        if renew_before >= expire:
            raise ValueError("renew_before must be shorter than expire")
        self._sdkappid = sdkappid
        self._identifier = identifier
        self._secret_key: Callable[[], str] = (
            secret_key if callable(secret_key) else _constant(secret_key)
        )
        self._expire = expire
        self._renew_before = renew_before
        self._clock = clock
        self._sig = ""
        self._made_at = 0

    def get(self) -> str:
        """The current UserSig, renewed when it is within `renew_before` of expiring."""
        now = int(self._clock())
        if not self._sig or now >= self._made_at + self._expire - self._renew_before:
            self._make(now)
        return self._sig

    def renew(self) -> str:
        """Make a new UserSig now (the server said the old one expired or is no longer valid)."""
        self._make(int(self._clock()))
        return self._sig

    def _make(self, now: int) -> None:
        key = self._secret_key()
        self._sig = make_usersig(self._sdkappid, self._identifier, key, self._expire, now)
        self._made_at = now

    def __repr__(self) -> str:
        # The key and the signature never show in a repr (and so in no traceback or log).
        return f"UserSigCache(sdkappid={self._sdkappid}, identifier={self._identifier!r})"
