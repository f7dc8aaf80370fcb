"""Helpers shared by the test tiers, in plain modules; the conftest files hold fixtures only."""
