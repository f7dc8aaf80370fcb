"""The data path: a request from its delivery to its settling, and what it needs on the way.

Imports neither `consumer.ops` nor `consumer.sandbox` (tests/unit/test_rooms.py holds it to that).
"""
