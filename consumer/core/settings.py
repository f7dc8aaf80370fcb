"""One settings object, read from the environment once in the entry point."""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.core.errors import ConfigurationError
from consumer.core.pacing import PacingRule
from consumer.core.secret_key import SecretKeySource, UnusableKey, check_key, read_key_file
from schemas.recall import OfflinePushInfo


class Region(StrEnum):
    """The data centres of Tencent Cloud Chat, by the name operators use."""

    CHINA = "china"
    SINGAPORE = "singapore"
    SEOUL = "seoul"
    TOKYO = "tokyo"
    FRANKFURT = "frankfurt"
    SILICON_VALLEY = "silicon_valley"
    JAKARTA = "jakarta"
    RIYADH = "riyadh"
    MUMBAI = "mumbai"


REGION_DOMAINS: dict[Region, str] = {
    Region.CHINA: "console.tim.qq.com",
    Region.SINGAPORE: "adminapisgp.im.qcloud.com",
    Region.SEOUL: "adminapikr.im.qcloud.com",
    Region.TOKYO: "adminapijpn.im.qcloud.com",
    Region.FRANKFURT: "adminapiger.im.qcloud.com",
    Region.SILICON_VALLEY: "adminapiusa.im.qcloud.com",
    Region.JAKARTA: "adminapiidn.im.qcloud.com",
    Region.RIYADH: "adminapiksa.im.qcloud.com",
    Region.MUMBAI: "adminapiind.im.qcloud.com",
}


class SettingsError(ConfigurationError):
    """A setting is missing or invalid; the message names the variable, in one line."""


def checked_base_url(value: str | None) -> str | None:
    """An API base URL override: None when empty, else http(s) without a trailing slash."""
    if value is None or value == "":
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Everything tim-recall reads from its environment."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # Tencent Cloud Chat
    sdkappid: int | None = Field(default=None, validation_alias=_env("TIM_SDKAPPID"), gt=0)
    secret_key_value: SecretStr | None = Field(
        default=None, validation_alias=_env("TIM_SECRET_KEY")
    )
    secret_key_file: Path | None = Field(default=None, validation_alias=_env("TIM_SECRET_KEY_FILE"))
    identifier: str = Field(
        default="administrator", validation_alias=_env("TIM_IDENTIFIER"), min_length=1
    )
    region: Region = Field(default=Region.CHINA, validation_alias=_env("TIM_REGION"))
    base_url: str | None = Field(default=None, validation_alias=_env("TIM_BASE_URL"))
    connect_timeout_s: float = Field(
        default=3.0, validation_alias=_env("TIM_CONNECT_TIMEOUT_S"), gt=0
    )
    read_timeout_s: float = Field(default=10.0, validation_alias=_env("TIM_READ_TIMEOUT_S"), gt=0)
    usersig_expire_s: int = Field(
        default=86400, validation_alias=_env("TIM_USERSIG_EXPIRE_S"), ge=600
    )

    # Many apps (consumer/core/apps.py): a YAML file of apps; unset, TIM_* name the only one
    apps_file: Path | None = Field(default=None, validation_alias=_env("RECALL_APPS_FILE"))
    apps_reload_s: float = Field(default=5.0, validation_alias=_env("RECALL_APPS_RELOAD_S"), gt=0)
    exchange: str = Field(
        default="tim-recall", validation_alias=_env("RECALL_EXCHANGE"), min_length=1
    )
    # Spreads the apps over replicas on RabbitMQ 4 (consumer priorities): a StatefulSet's pod name
    replica_id: str = Field(
        default_factory=socket.gethostname, validation_alias=_env("RECALL_REPLICA_ID"), min_length=1
    )

    # RabbitMQ
    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        validation_alias=_env("RECALL_AMQP_URL"),
    )
    heartbeat_s: int = Field(default=10, validation_alias=_env("RECALL_HEARTBEAT_S"), ge=1)
    queue: str = Field(
        default="timpush.recall", validation_alias=_env("RECALL_QUEUE"), min_length=1
    )
    dead_letter_queue_name: str | None = Field(
        default=None, validation_alias=_env("RECALL_DEAD_LETTER_QUEUE")
    )
    results_stream_name: str | None = Field(
        default=None, validation_alias=_env("RECALL_RESULTS_STREAM")
    )
    delivery_limit: int = Field(default=20, validation_alias=_env("RECALL_DELIVERY_LIMIT"), ge=1)
    results_max_age: str = Field(default="7D", validation_alias=_env("RECALL_RESULTS_MAX_AGE"))

    # Pacing and retries
    interval_s: float = Field(default=1.0, validation_alias=_env("RECALL_INTERVAL_S"), gt=0)
    # consumer/core/pacing.py: place a call after the previous answer (the default: safe under
    # any load) or after the previous send (link-aware; a load that eases can bring a 90051)
    pacing: PacingRule = Field(default=PacingRule.FINISH, validation_alias=_env("RECALL_PACING"))
    pacing_margin_s: float = Field(
        default=0.002, validation_alias=_env("RECALL_PACING_MARGIN_S"), ge=0, le=1
    )
    # the `send` rule's bound on the link's jitter each way (round trips spread over 4x this)
    pacing_jitter_s: float = Field(
        default=0.01, validation_alias=_env("RECALL_PACING_JITTER_S"), ge=0, le=1
    )
    retry_budget_s: float = Field(
        default=300.0, validation_alias=_env("RECALL_RETRY_BUDGET_S"), gt=0, le=1500
    )
    retry_initial_s: float = Field(
        default=1.0, validation_alias=_env("RECALL_RETRY_INITIAL_S"), gt=0
    )
    retry_max_s: float = Field(default=30.0, validation_alias=_env("RECALL_RETRY_MAX_S"), gt=0)
    halt_probe_initial_s: float = Field(
        default=5.0, validation_alias=_env("RECALL_HALT_PROBE_INITIAL_S"), gt=0
    )
    halt_probe_max_s: float = Field(
        default=300.0, validation_alias=_env("RECALL_HALT_PROBE_MAX_S"), gt=0
    )

    # Requests
    max_body_bytes: int = Field(
        default=64 * 1024, validation_alias=_env("RECALL_MAX_BODY_BYTES"), ge=256
    )
    expiry_check: bool = Field(default=True, validation_alias=_env("RECALL_EXPIRY_CHECK"))
    expiry_margin_s: float = Field(
        default=300.0, validation_alias=_env("RECALL_EXPIRY_MARGIN_S"), ge=0
    )
    default_offline_push_info: OfflinePushInfo | None = Field(
        default=None, validation_alias=_env("RECALL_DEFAULT_OFFLINE_PUSH_INFO")
    )
    # The 24-hour memory (consumer/core/memory.py): its ceiling, and the takeover rebuild's budget
    memory_max_entries: int = Field(
        default=500_000, validation_alias=_env("RECALL_MEMORY_MAX_ENTRIES"), ge=1000
    )
    rebuild_budget_s: float = Field(
        default=60.0, validation_alias=_env("RECALL_REBUILD_BUDGET_S"), gt=0
    )

    # Operations
    # uvloop: the same asyncio API on libuv, about a fifth less CPU per recall (bench/e2e.py)
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", validation_alias=_env("RECALL_EVENT_LOOP")
    )
    # lean: consumer/core/transport.py under httpx, half the CPU of httpcore's per call
    http_transport: Literal["lean", "httpcore"] = Field(
        default="lean", validation_alias=_env("RECALL_HTTP_TRANSPORT")
    )
    http_host: str = Field(default="0.0.0.0", validation_alias=_env("RECALL_HTTP_HOST"))
    http_port: int = Field(default=9464, validation_alias=_env("RECALL_HTTP_PORT"), ge=0, le=65535)
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", validation_alias=_env("RECALL_LOG_FORMAT")
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", validation_alias=_env("RECALL_LOG_LEVEL")
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return checked_base_url(value)

    @property
    def dead_letter_queue(self) -> str:
        """The dead-letter queue's name."""
        return self.dead_letter_queue_name or f"{self.queue}.dead"

    @property
    def results_stream(self) -> str:
        """The results stream's name."""
        return self.results_stream_name or f"{self.queue}.results"

    @property
    def api_base_url(self) -> str:
        """Where the API lives: the override, or the region's HTTPS domain."""
        return self.base_url or f"https://{REGION_DOMAINS[self.region]}"

    def require_sdkappid(self) -> int:
        """The SDKAppID, or SettingsError naming TIM_SDKAPPID."""
        if self.sdkappid is None:
            raise SettingsError("TIM_SDKAPPID is required: the SDKAppID of the Chat app")
        return self.sdkappid

    def secret_key(self) -> str:
        """The app's SecretKey from TIM_SECRET_KEY or TIM_SECRET_KEY_FILE, or SettingsError."""
        if self.secret_key_value is not None and self.secret_key_file is not None:
            raise SettingsError("set TIM_SECRET_KEY or TIM_SECRET_KEY_FILE, not both")
        try:
            if self.secret_key_value is not None:
                source = "TIM_SECRET_KEY"
                return check_key(self.secret_key_value.get_secret_value())
            if self.secret_key_file is not None:
                source = "TIM_SECRET_KEY_FILE"
                return read_key_file(self.secret_key_file)
        except UnusableKey as exc:  # the reason only: never the content
            raise SettingsError(f"{source} is unusable: {exc.reason}") from None
        raise SettingsError("TIM_SECRET_KEY or TIM_SECRET_KEY_FILE is required")

    def secret_key_source(self) -> SecretKeySource:
        """The key for each UserSig: the file re-read safely; SettingsError now if unusable."""
        return SecretKeySource(self.secret_key(), self.secret_key_file)


def _variable_of(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices) and alias.choices:
        return str(alias.choices[0])
    return field.upper()


def load_settings(**overrides: object) -> Settings:
    """Read the environment; an invalid value raises SettingsError naming its variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise SettingsError(f"{_variable_of(field)}: {err['msg']}") from None
