"""Every setting of the server, read once from JAMINS_* variables and a .env file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "jamins"


class Settings(BaseSettings):
    """The server's configuration. Tests build it explicitly (JAMINS_* variables, no file);
    `jamins` reads the environment and a settings file (from_environment)."""

    model_config = SettingsConfigDict(
        env_prefix="JAMINS_",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    @classmethod
    def from_environment(cls, **given: Any) -> Settings:
        """What `jamins` runs with: `given`, then JAMINS_* variables, then the .env file of
        the working directory, or the file JAMINS_ENV_FILE names (empty: none; the test
        suite), as the environment says when this is called."""
        return cls(_env_file=os.environ.get("JAMINS_ENV_FILE", ".env") or None, **given)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the embedded node's chain, the SQLite file and the signer key live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (sqlite:///FILE or postgresql://...); default: "
        "an SQLite file in the data directory.",
    )
    rpc_url: str | None = Field(
        default=None,
        description="JSON-RPC URL of the chain node. Unset: the server starts its own anvil "
        "node (the embedded default).",
    )
    chain_id: int = Field(default=1551, description="Chain id the node must report.")
    contract_address: str | None = Field(
        default=None,
        description="Registrar address. Unset: the address remembered in the database, or a "
        "contract deployed on first start (embedded default, or JAMINS_DEPLOY=true).",
    )
    deploy: bool = Field(
        default=False,
        description="Deploy the registrar on first start when no address is known.",
    )
    signer_key: SecretStr | None = Field(
        default=None,
        description="Hex private key of the account that pays for registrations.",
    )
    signer_key_file: Path | None = Field(
        default=None,
        description="File holding the hex private key, or an encrypted keystore JSON.",
    )
    signer_keystore_password: SecretStr | None = Field(
        default=None, description="Password of the keystore in signer_key_file."
    )
    gas_price_wei: int | None = Field(
        default=None,
        description="Gas price for registrations; unset: the node's eth_gasPrice.",
    )
    rpc_timeout: float = Field(
        default=5.0, gt=0, description="Seconds before a chain call is given up (503)."
    )
    request_timeout: float = Field(
        default=15.0, gt=0, description="Seconds before any request is answered 503."
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection has to send a request's headers (from connecting, "
        "or from the first byte of its next request) before it is closed.",
    )
    keepalive_timeout: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection is kept open."
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections per worker; beyond it the one waiting longest for its "
        "headers is closed.",
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL connections kept per worker; as many more open at peaks.",
    )
    db_pool_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a request waits for a free PostgreSQL connection (then 503).",
    )
    db_connect_timeout: int = Field(
        default=5, ge=1, description="Seconds to connect to PostgreSQL before giving up (503)."
    )
    negative_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a name the chain does not hold is remembered as free "
        "(one Clique block).",
    )
    lookup_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long a found record's answer is kept in memory (0: never). Writes "
        "this server makes or sees drop it at once; the bound matters with several servers.",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-For/-Proto are trusted for the client address "
        "(comma-separated IPs, or *).",
    )
    workers: int = Field(
        default=1, ge=1, description="Worker processes of `jamins serve` (needs JAMINS_RPC_URL)."
    )
    access_log: bool = Field(
        default=True,
        description="Log every request (uvicorn's access line, written in batches).",
    )
    registrar_exclusive: bool | None = Field(
        default=None,
        description="Whether this server is the only writer of the registrar (a private "
        "chain with its own registrar): lookups then answer names whose registration is "
        "still pending. false: they answer 503 until it is on chain, since another account "
        "may take the name first. Unset: true on the embedded node, false otherwise.",
    )
    receipt_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the writer polls for receipts."
    )
    max_in_flight: int = Field(
        default=16, ge=1, description="Registration transactions sent but not yet mined."
    )
    confirmations: int | None = Field(
        default=None,
        ge=0,
        description="Blocks on top of a registration's block before it is reported "
        "confirmed; unset: 2, or 0 on the embedded node (it mines only on demand).",
    )
    index_from_block: int | None = Field(
        default=None,
        ge=0,
        description="First block the indexer reads; unset: the registrar's deployment "
        "block when this server deployed it, else 0.",
    )
    reorg_window: int = Field(
        default=256, ge=1, description="Recent blocks whose hashes are kept to detect reorgs."
    )
    index_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the indexer looks for new blocks."
    )
    leader_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a server that is not the leader tries to take over.",
    )
    path_prefix: str = Field(
        default="",
        description="Serve the API under this lowercase prefix too (e.g. /jami).",
    )
    anvil_path: str | None = Field(
        default=None, description="The anvil binary of the embedded default."
    )
    embedded_block_time: float | None = Field(
        default=None,
        description="Block time of the embedded node in seconds; unset: a block per transaction.",
    )
    embedded_state_interval: int | None = Field(
        default=2,
        description="Seconds between dumps of the embedded node's state to disk (it is also "
        "dumped on a clean stop).",
    )
    log_level: str = Field(default="info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or as JSON objects (one per line)."
    )
    ssl_certfile: Path | None = Field(
        default=None, description="Serve HTTPS with this PEM certificate (chain) file."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="The private key of ssl_certfile (PEM)."
    )
    register_rate_per_minute: float = Field(
        default=10.0,
        ge=0,
        description="Registrations one client address may make per minute (503 beyond); "
        "0: no limit.",
    )
    register_burst: int = Field(
        default=5, ge=1, description="Registrations one client may make at once."
    )
    max_pending: int = Field(
        default=200,
        ge=0,
        description="Registrations waiting for the chain beyond which new ones answer 503; "
        "0: no bound.",
    )
    ready_max_lag_blocks: int = Field(
        default=20,
        ge=0,
        description="/readyz fails when the indexer is more blocks than this behind the head.",
    )
    chain_watch_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the server checks that the chain did not go backwards and "
        "still holds the registrar.",
    )
    balance_check_seconds: float = Field(
        default=60.0, gt=0, description="How often the signer's balance is checked."
    )
    low_balance_registrations: int = Field(
        default=100,
        ge=1,
        description="Warn when the signer's balance covers fewer registrations than this.",
    )

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
        return value.lower()

    @field_validator("data_dir", "signer_key_file", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        # No shell expands `~` in a .env file: it would name a folder called `~`.
        return value.expanduser() if value is not None else None

    @field_validator("path_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and (not value.startswith("/") or value != value.lower()):
            raise ValueError("path_prefix must start with / and be lowercase")
        return value

    def only_writer(self) -> bool:
        """Whether no one but this server writes the registrar (see registrar_exclusive)."""
        if self.registrar_exclusive is not None:
            return self.registrar_exclusive
        return self.embedded

    def effective_confirmations(self) -> int:
        if self.confirmations is not None:
            return self.confirmations
        return 0 if self.embedded and self.embedded_block_time is None else 2

    def sqlite_path(self) -> Path | None:
        """The SQLite file, when the database is one."""
        url = self.sqlalchemy_url()
        if not url.startswith("sqlite") or ":///" not in url:
            return None
        return Path(url.split(":///", 1)[1])

    @property
    def embedded(self) -> bool:
        """True when the server runs its own chain node."""
        return self.rpc_url is None

    def sqlalchemy_url(self) -> str:
        """The database URL for SQLAlchemy's sync engines (alembic, CLI)."""
        if self.database_url is None:
            return f"sqlite:///{self.data_dir / 'jamins.sqlite3'}"
        url = self.database_url
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if url.startswith("sqlite:///~"):
            url = "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).expanduser())
        return url

    def async_sqlalchemy_url(self) -> str:
        """The database URL for the server's async engine."""
        url = self.sqlalchemy_url()
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
        return url
