"""A local double of Tencent Cloud Chat's REST API, and a link to put in front of it.

Imports only `consumer.core` (the UserSig check, the HTTP plumbing), never `consumer.ops`.
"""

from consumer.sandbox.app import Sandbox, run_sandbox, serve_sandbox
from consumer.sandbox.records import CallRecord, SandboxConfig

__all__ = ["CallRecord", "Sandbox", "SandboxConfig", "run_sandbox", "serve_sandbox"]
