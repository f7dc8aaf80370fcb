"""Which request chain a delivery belongs to, with no copy of it published first. Pure.

A request travels through the recall queue once: the worker calls for the delivery it got and
settles that delivery. Only two things must still be recognised later, and neither needs a
stamp written before the call:

- **its own redelivery** (the broker hands the same message back after a crash or a lost
  connection): the broker says so (`redelivered`), and the message is the same bytes, so its
  `generation` (a digest of body, properties and headers, less the counters the broker adds
  on a redelivery) is the same;
- **a copy of ours** (a release or a re-publish after the retry budget): it carries its
  chain's `x-recall-lineage` header.

A chain's lineage is `<root>#<n>`: the root is the generation of the message that started it,
and `n` counts the chains of the same root that were already told (0 for nearly every
request). So the same bytes published again, or a dead letter moved back by any tool, start
chain `#1`, `#2`, ...: a new try with its own results event. The rules:

- a fresh delivery of a message that is not a copy of ours is always a new chain: a producer's
  second publish, `dlq replay`, the management UI's "Move messages", a shovel, a verbatim
  re-publish. It is never only acked;
- a redelivery of such a message continues the newest chain of its root: if that chain was
  told, the outcome is known and only the ack is owed; if not, a call may have been made and
  the chain goes on (a later 90050 counts as its own);
- a copy of ours (fresh or redelivered) whose lineage was told is only acked: the chain was
  settled elsewhere meanwhile (its original was redelivered to another replica after the copy
  was confirmed but before the ack arrived), so exactly one live chain remains;
- a dead letter (our `x-recall-error-code`, or the broker's `x-death`) is never a copy, even
  when an older version left `x-recall-lineage` on it.

What no rule can tell apart: two byte-identical messages (same body, properties and headers,
no message_id and no timestamp) within the memory's 24 hours, the first told, and the second's
first delivery cut before its outcome was told: its redelivery looks exactly like the first's
redelivery after a lost ack, and is only acked. The producer library, the CLI and `dlq replay`
always make each publish unique (a fresh message_id, a replay id), so only a foreign producer
that sets neither message_id nor timestamp can meet it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Added by the broker on a redelivery (x-delivery-count) and, from 4.3, on every delivery after
# a return (x-acquired-count): not part of the message.
BROKER_DELIVERY_HEADERS = frozenset({"x-delivery-count", "x-acquired-count"})
MAX_CHAINS = 64  # chains of one root looked for; more in 24 hours is a flood of the same bytes
DIGEST_BYTES = 16


def generation(
    body: bytes, properties: Iterable[tuple[str, Any]], headers: Mapping[str, Any]
) -> str:
    """A digest of one message as published: body, properties and headers (less the broker's
    delivery counters), the same for every redelivery of it."""
    parts = [b"%d:" % len(body), body]
    for name, value in properties:
        # The properties inline (a dozen, nearly all text or absent): what _feed would append.
        raw = name.encode("utf-8", "surrogatepass")
        parts += (b"s%d:" % len(raw), raw)
        if value is None:
            parts += _NONE
        elif type(value) is str:
            raw = value.encode("utf-8", "surrogatepass")
            parts += (b"s%d:" % len(raw), raw)
        else:
            _feed(parts, value)
    _feed(parts, {k: v for k, v in headers.items() if k not in BROKER_DELIVERY_HEADERS})
    # One update of the joined parts digests the same bytes as an update per part: a
    # generation must not change between versions (replicas of two versions meet in a deploy).
    return hashlib.blake2b(b"".join(parts), digest_size=DIGEST_BYTES).hexdigest()


_NONE = (b"v13:", b"NoneType=None")  # _feed's bytes for None


def _feed(parts: list[bytes], value: Any) -> None:
    """Append a header value of any AMQP type, tagged with its type, without recursion."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        # The common types by identity first: an isinstance against Mapping is an ABC check.
        if kind is str:
            raw = item.encode("utf-8", "surrogatepass")
            parts += (b"s%d:" % len(raw), raw)
        elif item is None or kind is int or kind is bool:
            raw = f"{kind.__name__}={item!r}".encode()
            parts += (b"v%d:" % len(raw), raw)
        elif kind is _Mark:
            parts.append(item.text)
        elif isinstance(item, Mapping):
            parts.append(b"{%d" % len(item))
            pending.append(_Mark(b"}"))
            for key in sorted(item, key=str, reverse=True):
                pending += [item[key], str(key)]
        elif isinstance(item, list | tuple):
            parts.append(b"[%d" % len(item))
            pending.append(_Mark(b"]"))
            pending += reversed(item)
        elif isinstance(item, bytes | bytearray | memoryview):
            raw = bytes(item)
            parts += (b"b%d:" % len(raw), raw)
        elif isinstance(item, str):
            raw = item.encode("utf-8", "surrogatepass")
            parts += (b"s%d:" % len(raw), raw)
        else:  # None, bool, int, float, Decimal, datetime: repr is exact and stable
            raw = f"{type(item).__name__}={item!r}".encode()
            parts += (b"v%d:" % len(raw), raw)


@dataclass(frozen=True)
class _Mark:
    text: bytes


@dataclass(frozen=True)
class Chain:
    """The chain a delivery belongs to, and whether its outcome was already told."""

    lineage: str
    told: bool  # settled and told before: only the ack is owed
    continued: bool  # not the chain's first delivery: an earlier one may have called


def lineage_of(root: str, n: int) -> str:
    """The lineage of the `n`-th chain started by the message whose generation is `root`."""
    return f"{root}#{n}"


def resolve_chain(
    *,
    generation: str,
    carried: str | None,
    redelivered: bool,
    was_told: Callable[[str], bool],
) -> Chain:
    """Which chain a delivery continues or starts (see the module's rules).

    `carried`: the lineage a copy of ours carries (None for anything else, dead letters
    included); `was_told(lineage)`: whether that chain's results event was published.
    """
    if carried is not None:
        return Chain(carried, told=was_told(carried), continued=True)
    n = 0
    while n < MAX_CHAINS and was_told(lineage_of(generation, n)):
        n += 1
    if redelivered and n > 0:  # the newest told chain of these bytes: its ack was lost
        return Chain(lineage_of(generation, n - 1), told=True, continued=True)
    return Chain(lineage_of(generation, n), told=False, continued=redelivered)
