"""consumer/core/usersig.py, cross-checked with Tencent's official tls-sig-api-v2."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import pytest
import TLSSigAPIv2

from consumer.core.usersig import (
    UserSigCache,
    UserSigError,
    decode_usersig,
    make_usersig,
    verify_usersig,
)

APP = 1400000000
KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
ADMIN = "administrator"
T0 = 1_712_112_711
EXPIRE = 86400


def official_sig(monkeypatch: pytest.MonkeyPatch, at: int, key: str = KEY, app: int = APP) -> str:
    monkeypatch.setattr(TLSSigAPIv2.time, "time", lambda: float(at))
    return str(TLSSigAPIv2.TLSSigAPIv2(app, key).gen_sig(ADMIN, EXPIRE))


def official_decode(sig: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(zlib.decompress(TLSSigAPIv2.base64_decode_url(sig.encode())))
    return doc


def test_official_sig_verifies_and_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    sig = official_sig(monkeypatch, T0)
    fields = verify_usersig(sig, APP, ADMIN, KEY, now=T0 + 10)
    assert fields == decode_usersig(sig)
    doc = official_decode(sig)
    assert (fields.identifier, fields.sdkappid, fields.time, fields.expire, fields.sig) == (
        doc["TLS.identifier"],
        doc["TLS.sdkappid"],
        doc["TLS.time"],
        doc["TLS.expire"],
        doc["TLS.sig"],
    )
    assert (fields.identifier, fields.sdkappid, fields.time, fields.expire) == (
        ADMIN,
        APP,
        T0,
        EXPIRE,
    )
    assert fields.version == "2.0"


def test_ours_decodes_with_official_helpers_to_the_official_hmac(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours = official_decode(make_usersig(APP, ADMIN, KEY, EXPIRE, T0))
    theirs = official_decode(official_sig(monkeypatch, T0))
    assert ours == theirs
    assert ours["TLS.ver"] == "2.0"
    assert isinstance(ours["TLS.sdkappid"], int)
    assert base64.b64decode(ours["TLS.sig"], validate=True)


def _zlib_b64url(raw: bytes) -> str:
    return str(TLSSigAPIv2.base64_encode_url(zlib.compress(raw)))


@pytest.mark.parametrize(
    ("sig", "app", "identifier", "key", "now", "code"),
    [
        ("OURS", APP, ADMIN, "another-key", T0, 70003),
        ("OURS", APP, ADMIN, KEY, T0 + EXPIRE + 1, 70001),
        ("OURS", APP, "someone-else", KEY, T0, 70013),
        ("OURS", APP + 1, ADMIN, KEY, T0, 70014),
        ("not a usersig at all!", APP, ADMIN, KEY, T0, 70005),
        (
            TLSSigAPIv2.base64_encode_url(zlib.compress(b'{"a": 1}')[:-4]),
            APP,
            ADMIN,
            KEY,
            T0,
            70005,
        ),
        (_zlib_b64url(b"not json"), APP, ADMIN, KEY, T0, 70005),
        (_zlib_b64url(b"[1, 2]"), APP, ADMIN, KEY, T0, 70005),
        ("", APP, ADMIN, KEY, T0, 70002),
    ],
    ids=[
        "wrong-key",
        "expired",
        "other-identifier",
        "other-sdkappid",
        "garbage",
        "truncated-zlib",
        "zlib-not-json",
        "json-not-object",
        "empty",
    ],
)
def test_verification_errors(
    sig: str, app: int, identifier: str, key: str, now: int, code: int
) -> None:
    if sig == "OURS":
        sig = make_usersig(APP, ADMIN, KEY, EXPIRE, T0)
    with pytest.raises(UserSigError) as caught:
        verify_usersig(sig, app, identifier, key, now)
    assert caught.value.code == code


def test_valid_until_exactly_time_plus_expire() -> None:
    sig = make_usersig(APP, ADMIN, KEY, EXPIRE, T0)
    assert verify_usersig(sig, APP, ADMIN, KEY, T0 + EXPIRE).time == T0


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_cache(clock: FakeClock, key: Any = KEY, renew_before: int = 3600) -> UserSigCache:
    return UserSigCache(APP, ADMIN, key, expire=EXPIRE, renew_before=renew_before, clock=clock)


def test_cache_keeps_one_sig_then_renews_once_before_expiry() -> None:
    clock = FakeClock(T0)
    cache = make_cache(clock)
    first = cache.get()
    clock.t = T0 + EXPIRE - 3600 - 1
    assert cache.get() == first
    clock.t = T0 + EXPIRE - 3600
    renewed = cache.get()
    assert renewed != first
    assert decode_usersig(renewed).time == T0 + EXPIRE - 3600
    clock.t += 3599
    assert cache.get() == renewed
    verify_usersig(renewed, APP, ADMIN, KEY, clock.t)


def test_renew_forces_a_new_sig_and_rereads_a_callable_key() -> None:
    keys = iter(["key-one-1234", "key-two-5678"])
    reads: list[str] = []

    def key() -> str:
        reads.append(next(keys))
        return reads[-1]

    clock = FakeClock(T0)
    cache = make_cache(clock, key=key)
    first = cache.get()
    assert cache.get() == first
    assert reads == ["key-one-1234"]
    clock.t = T0 + 5
    second = cache.renew()
    assert reads == ["key-one-1234", "key-two-5678"]
    assert second != first
    assert cache.get() == second
    verify_usersig(second, APP, ADMIN, "key-two-5678", clock.t)
    with pytest.raises(UserSigError):
        verify_usersig(second, APP, ADMIN, "key-one-1234", clock.t)


def test_cache_refuses_renew_before_not_shorter_than_expire() -> None:
    with pytest.raises(ValueError):
        make_cache(FakeClock(T0), renew_before=EXPIRE)


def test_repr_shows_neither_key_nor_sig() -> None:
    cache = make_cache(FakeClock(T0))
    sig = cache.get()
    text = repr(cache)
    assert KEY not in text
    assert sig not in text
    assert str(APP) in text
