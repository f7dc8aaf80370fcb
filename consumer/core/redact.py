"""Remove secrets from text: the SecretKey, any UserSig, any `usersig=` value, URL passwords."""

from __future__ import annotations

import re

REDACTED = "[redacted]"
_USERSIG_QUERY = re.compile(r"(usersig=)[^&\s'\"]*", re.IGNORECASE)
# The password of any scheme://user:password@host (the AMQP URL, one of a list, as a library
# prints it): the whole RECALL_AMQP_URL as a secret would not match one URL of a list.
_URL_PASSWORD = re.compile(
    r"((?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*:)[^\s/?#@'\"]+@"
)
# A UserSig is zlib-compressed JSON in Tencent's base64: it starts with a zlib header, 0x78 then
# 0x01/0x5e/0x9c/0xda by compression level ("eA", "eF", "eJ", "eN"), and is long.
_USERSIG_TOKEN = re.compile(r"(?<![A-Za-z0-9])e[AFJN][A-Za-z0-9*\-_+/=]{40,}")
_USERSIG_TOKEN_MIN = 42  # the shortest text the pattern can match


class Redactor:
    """Scrubs known secrets and anything shaped like a UserSig from strings."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def with_secret(self, secret: str) -> Redactor:
        """A redactor that also scrubs `secret`."""
        return Redactor((*self._secrets, secret))

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced by a marker."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        # Each pattern only where it can match (a dozen strings per log line, most short).
        if "=" in text:
            text = _USERSIG_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
        if "@" in text:
            text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
        if len(text) < _USERSIG_TOKEN_MIN:
            return text
        return _USERSIG_TOKEN.sub(REDACTED, text)


scrub_usersig = Redactor()
