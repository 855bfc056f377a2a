"""Settings: command-line flag > CHRONICLE_* environment > TOML file > defaults.

`data_dir` derives the three backend URLs when they are not given. Nothing is
built at import time: call `load_settings()` from the composition root.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: What a `chronicle serve` process can run, in their canonical order.
ROLES = ("ingest", "projector", "api")


class RemoteAE:
    """A configured peer: TITLE@HOST:PORT."""

    __slots__ = ("title", "host", "port")

    def __init__(self, title: str, host: str, port: int) -> None:
        self.title, self.host, self.port = title, host, port

    @classmethod
    def parse(cls, text: str) -> RemoteAE:
        try:
            title, address = text.strip().split("@", 1)
            host, port = address.rsplit(":", 1)
            ae = cls(title.strip(), host.strip(), int(port))
        except ValueError as exc:
            raise ValueError(f"remote AE {text!r} is not TITLE@HOST:PORT") from exc
        if not ae.title or len(ae.title) > 16:
            raise ValueError(f"remote AE title {ae.title!r} must be 1 to 16 characters")
        return ae

    def __str__(self) -> str:
        return f"{self.title}@{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"RemoteAE({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteAE) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHRONICLE_", extra="ignore")

    data_dir: Path = Path("./data")
    config: Path | None = None
    log_url: str = ""
    blob_url: str = ""
    index_url: str = ""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    dimse_host: str = "127.0.0.1"
    dimse_port: int = 11112
    ae_title: str = "CHRONICLE"
    remote_aes: list[str] = Field(default_factory=list)
    accept_any_caller: bool = False
    public_url: str = ""

    site: str = "local"
    node: str = ""
    #: Read-your-writes bound: how long a query waits for projections.
    read_wait_seconds: float = 5.0
    #: Below this many free bytes on the data disk, stores are refused.
    min_free_bytes: int = 512 * 1024 * 1024
    #: Largest STOW-RS request body and DIMSE dataset accepted.
    max_body_bytes: int = 4 * 1024**3
    #: Maximum PDU size offered and accepted over DIMSE (0 = unlimited).
    max_pdu_size: int = 0
    max_associations: int = 64
    #: DIMSE association timeouts, seconds: A-ASSOCIATE/A-RELEASE (ACSE), a
    #: DIMSE message, and network silence.
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    #: Storage Commitment N-EVENT-REPORT delivery on a new association:
    #: attempts, first retry delay, back-off factor, longest delay (seconds).
    commitment_report_attempts: int = 5
    commitment_retry_delay: float = 2.0
    commitment_retry_backoff: float = 2.0
    commitment_retry_max_delay: float = 60.0
    #: WADO-URI anonymize=yes: the secret its replacement UIDs derive from. Set,
    #: the same UID maps to the same replacement in every process and after a
    #: restart; empty, each process draws its own (consistent while it runs).
    anonymize_uid_secret: str = Field(default="", repr=False)
    #: Front-end processes (DIMSE + DICOMweb) sharing the ports; 1 = just the
    #: owner; 0 = one per core available to the process, at most 8.
    workers: int = Field(default=0, ge=0)
    #: What this process runs: any of ingest, projector, api (see api/roles.py).
    roles: list[str] = Field(default_factory=lambda: list(ROLES))
    default_character_set: str = "ISO_IR 100"
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    projector_batch: int = 1000

    @field_validator("remote_aes", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: Any) -> Any:
        # `--role ingest,api`, `--role ingest --role api`, CHRONICLE_ROLES=ingest,api
        # and TOML `roles = ["ingest", "api"]` all name the same set.
        parts = [value] if isinstance(value, str) else value
        if not isinstance(parts, list | tuple):
            return value
        return [r.strip().lower() for part in parts for r in str(part).split(",") if r.strip()]

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value).difference(ROLES))
        if unknown:
            raise ValueError(f"unknown role {', '.join(unknown)} (roles: {', '.join(ROLES)})")
        if not value:
            raise ValueError(f"at least one role is needed ({', '.join(ROLES)})")
        return [role for role in ROLES if role in value]

    @field_validator("remote_aes")
    @classmethod
    def _check_remote_aes(cls, value: list[str]) -> list[str]:
        for text in value:
            RemoteAE.parse(text)
        return value

    @field_validator("default_character_set")
    @classmethod
    def _check_charset(cls, value: str) -> str:
        from pydicom.charset import python_encoding

        if not value or value not in python_encoding:
            raise ValueError(f"unknown default character set {value!r} (e.g. ISO_IR 100)")
        return value

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        if not value.strip() or len(value.strip()) > 16:
            raise ValueError("AE title must be 1 to 16 characters")
        return value.strip()

    @model_validator(mode="after")
    def _derive_urls(self) -> Settings:
        root = self.data_dir.resolve()
        if not self.log_url:
            self.log_url = f"sqlite://{root / 'log.db'}"
        if not self.blob_url:
            self.blob_url = f"file://{root / 'blobs'}"
        if not self.index_url:
            self.index_url = f"chdb://{root / 'index'}"
        return self

    @property
    def remotes(self) -> list[RemoteAE]:
        return [RemoteAE.parse(text) for text in self.remote_aes]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() merges the layers itself, so the order is explicit.
        return (init_settings,)


def _toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    # Accept both a flat file and one with a [chronicle] table.
    section = data.get("chronicle", data)
    return {k.replace("-", "_"): v for k, v in section.items()}


def load_settings(
    flags: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge flags (non-None only) > CHRONICLE_* environment > TOML config > defaults."""
    env = os.environ if environ is None else environ
    given = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    config = given.get("config") or env.get("CHRONICLE_CONFIG")
    values: dict[str, Any] = _toml(Path(config)) if config else {}
    for name in Settings.model_fields:
        key = f"CHRONICLE_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update(given)
    return Settings(**values)


__all__ = ["ROLES", "RemoteAE", "Settings", "load_settings"]
