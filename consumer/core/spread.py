"""How a fleet spreads apps over replicas with no coordinator: consumer priorities (pure).

Every replica subscribes to every app's queue. With single active consumer, RabbitMQ 4 makes
the subscriber with the highest `x-priority` the active one (3.x keeps the first). Each replica
asks for priority hash(app, replica): each app goes to the replica whose hash is highest for it
(rendezvous hashing). So the apps spread evenly, a replica that joins takes about 1/N of them
(from every other replica alike), and one that leaves hands each of its apps to the replica
next in that app's own order: no app moves that did not have to.
"""

from __future__ import annotations

import hashlib

PRIORITY_BITS = 31  # x-priority is a signed integer: stay positive


def priority(app: int, replica_id: str) -> int:
    """This replica's consumer priority for `app`: stable, and independent across apps."""
    digest = hashlib.blake2b(f"{app}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - PRIORITY_BITS)


def owner(app: int, replicas: list[str]) -> str:
    """The replica that serves `app` on RabbitMQ 4 when all of `replicas` subscribe to it."""
    return max(replicas, key=lambda replica: (priority(app, replica), replica))
