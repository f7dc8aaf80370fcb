"""A local double of Tencent Cloud Chat's REST API, and a link to put in front of it.

Imports only `consumer.core` (the UserSig check, the HTTP plumbing), never `consumer.ops`.
"""

from consumer.sandbox.app import Sandbox, serve_sandbox
from consumer.sandbox.records import CallRecord, SandboxApp, SandboxConfig
from consumer.sandbox.run import run_sandbox

__all__ = ["CallRecord", "Sandbox", "SandboxApp", "SandboxConfig", "run_sandbox", "serve_sandbox"]
