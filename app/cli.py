"""The `jamins` console script."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy.engine
import sqlalchemy.exc
import typer
import uvicorn
from pydantic import ValidationError

from app.logs import configure_logging
from app.settings import Settings

cli = typer.Typer(
    help="jamins: a self-hostable name server for Jami.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (env JAMINS_DATA_DIR).", show_default=False),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one line for the operator (never a traceback)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and .env, with command-line options on top; a bad
    value ends the command with one line naming its variable."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings.from_environment(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(
                f"JAMINS_{field.upper()}={error.get('input')!s}: "
                f"{error['msg'].removeprefix('Value error, ')}"
            )
        fail("invalid setting: " + "; ".join(problems))


def check_data_dir(settings: Settings) -> None:
    """The data directory exists (or can be made) and takes files; else one line."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        fail(
            f"JAMINS_DATA_DIR {path} is not a writable directory ({exc.strerror}): "
            "fix its permissions or choose another with --data-dir"
        )


def check_port(host: str, port: int) -> None:
    """Fail now, before a node is started or a registrar deployed, if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a port left in TIME_WAIT by a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            fail(
                f"cannot listen on {host}:{port} ({exc.strerror}): stop what uses it "
                "or choose another --port"
            )


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    data_dir: DataDirOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Worker processes (env JAMINS_WORKERS; more than 1 needs JAMINS_RPC_URL).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the name server API (on the embedded chain node unless JAMINS_RPC_URL is set)."""
    from app.provision import OPERATOR_ERRORS, provision
    from app.serving import GuardedHttpProtocol
    from app.workers.leader import DataDirInUse, DataDirLock

    settings = load_settings(data_dir=data_dir, workers=workers)
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        fail("set both JAMINS_SSL_CERTFILE and JAMINS_SSL_KEYFILE, or neither")
    if settings.workers > 1 and settings.embedded:
        fail("the embedded chain node serves one worker: set JAMINS_RPC_URL")
    # Everything an operator can get wrong is checked before anything is started.
    if settings.embedded or settings.sqlite_path() is not None:
        check_data_dir(settings)
    check_port(host, port)
    node_lock = DataDirLock(settings.data_dir) if settings.embedded else None
    if node_lock is not None:
        try:
            node_lock.acquire()
        except DataDirInUse as exc:
            fail(str(exc))
    metrics_dir: str | None = None
    try:
        if not settings.embedded:
            # Once, before any worker starts: the workers only read what it recorded.
            # The embedded node's one process provisions itself (app.provision).
            try:
                provision(settings)
            except OPERATOR_ERRORS as exc:
                fail(f"cannot start: {exc}", code=3)
        # Each worker process (and the one worker, in this process) builds its app from
        # the environment, command-line options included.
        os.environ["JAMINS_WORKERS"] = str(settings.workers)
        if data_dir is not None:
            os.environ["JAMINS_DATA_DIR"] = str(data_dir)
        if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # prometheus-client's multiprocess mode: each worker (a fresh interpreter that
            # reads this at import) writes its metrics to files there; /metrics merges them.
            metrics_dir = tempfile.mkdtemp(prefix="jamins-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "app.main:create_app_from_env",
            factory=True,
            http=GuardedHttpProtocol,
            timeout_keep_alive=settings.keepalive_timeout,
            workers=settings.workers,
            host=host,
            port=port,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            log_config=None,
            log_level=settings.log_level,
            # The access lines are the app's (app.logs.AccessLog), cheaper than uvicorn's.
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            # Jami clients send no Accept-Encoding and read bodies as they come.
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        # uvicorn has returned, so the lifespan has stopped the node: only now may
        # another process start one on this data directory.
        if node_lock is not None:
            node_lock.release()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@cli.command()
def migrate(data_dir: DataDirOption = None) -> None:
    """Create or upgrade the database schema (the first step of what `serve` provisions)."""
    from app.provision import ProvisionError, migrate_database

    settings = load_settings(data_dir=data_dir)
    configure_logging(settings.log_level, settings.log_format)
    try:
        migrate_database(settings)
    except ProvisionError as exc:
        fail(str(exc), code=1)
    typer.echo("database is at the newest schema")


@cli.command()
def deploy(data_dir: DataDirOption = None) -> None:
    """Deploy the registrar on JAMINS_RPC_URL with the signer key, and record it (prints
    the registrar the database already records, or JAMINS_CONTRACT_ADDRESS, instead)."""
    from app.provision import OPERATOR_ERRORS, provision

    settings = load_settings(data_dir=data_dir)
    configure_logging(settings.log_level, settings.log_format)
    if settings.embedded:
        fail("the embedded default deploys its registrar itself: set JAMINS_RPC_URL")
    try:
        address = provision(settings, deploy=True)
    except OPERATOR_ERRORS as exc:
        fail(f"cannot deploy: {exc}", code=1)
    typer.echo(address)


@cli.command()
def status(
    name: Annotated[str, typer.Argument(help="The name, in any case.")],
    data_dir: DataDirOption = None,
) -> None:
    """Show what became of a registration this server accepted."""
    settings = load_settings(data_dir=data_dir)
    configure_logging("warning")
    try:
        found = asyncio.run(_status(settings, name))
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError) as exc:
        url = sqlalchemy.engine.make_url(settings.sqlalchemy_url())
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        fail(
            f"cannot reach the database {url.render_as_string(hide_password=True)} "
            f"(JAMINS_DATABASE_URL): {reason}",
            code=1,
        )
    if found is None:
        typer.echo(f"{name}: this server never accepted a registration for it", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(found, indent=2, ensure_ascii=False))


async def _status(settings: Settings, name: str) -> dict[str, Any] | None:
    from app.db import make_async_engine, make_sessionmaker, migrate
    from app.errors import InvalidName, RegistrationNotFound
    from app.services.registry import NameService

    migrate(settings)
    engine = make_async_engine(settings)
    service = NameService(
        sessionmaker=make_sessionmaker(engine),
        registrar=None,
        negative_cache_seconds=0,
        registrations_enabled=False,
    )
    try:
        view = await service.registration_status(name)
    except InvalidName:
        typer.echo(f"{name!r} is not a valid name", err=True)
        raise typer.Exit(2) from None
    except RegistrationNotFound:
        return None
    finally:
        await engine.dispose()
    return view.model_dump()


@cli.command()
def genesis(
    signer: Annotated[
        list[str],
        typer.Option(help="Address of a sealing signer (repeat for several).", show_default=False),
    ],
    chain_id: Annotated[
        int, typer.Option(help="Chain id of the new network (not 1551).", show_default=False)
    ],
    period: Annotated[int, typer.Option(help="Seconds between blocks.")] = 5,
    epoch: Annotated[int, typer.Option(help="Blocks between Clique checkpoints.")] = 30000,
    gas_limit: Annotated[int, typer.Option(help="Block gas limit.")] = 0x47B760,
    fund: Annotated[
        list[str] | None,
        typer.Option(
            help="Account to pre-fund, e.g. the name server's signer (repeatable; "
            "default: the sealing signers).",
            show_default=False,
        ),
    ] = None,
    timestamp: Annotated[
        int | None, typer.Option(help="Genesis timestamp; default: now.", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write here instead of stdout.", show_default=False)
    ] = None,
) -> None:
    """Write the genesis of a private Clique network with the Jami chain's fork rules."""
    import time

    from app.genesis import JAMI_CHAIN_ID, GenesisError, build_clique_genesis

    if chain_id == JAMI_CHAIN_ID:
        typer.echo("1551 is the public Jami network: pick another chain id", err=True)
        raise typer.Exit(2)
    try:
        document = build_clique_genesis(
            signers=signer,
            chain_id=chain_id,
            period=period,
            epoch=epoch,
            gas_limit=gas_limit,
            timestamp=int(time.time()) if timestamp is None else timestamp,
            funded=fund or None,
        )
    except GenesisError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    text = json.dumps(document, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@cli.command()
def keystore(
    file: Annotated[Path, typer.Argument(help="The keystore file to write (never overwritten).")],
    password_file: Annotated[
        Path | None,
        typer.Option(help="Read the password from this file's first line.", show_default=False),
    ] = None,
) -> None:
    """Create a signer key as an encrypted keystore JSON and print its address.

    The password comes from --password-file, else JAMINS_SIGNER_KEYSTORE_PASSWORD, else a
    prompt. Point JAMINS_SIGNER_KEY_FILE at the file; the key itself is never shown.
    """
    from app.chain.signer import create_keystore_file

    if password_file is not None:
        try:
            lines = password_file.expanduser().read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            typer.echo(f"cannot read the password file {password_file}: {exc}", err=True)
            raise typer.Exit(2) from None
        password = lines[0] if lines else ""
    elif os.environ.get("JAMINS_SIGNER_KEYSTORE_PASSWORD") is not None:
        password = os.environ["JAMINS_SIGNER_KEYSTORE_PASSWORD"]
    else:
        password = typer.prompt("Keystore password", hide_input=True, confirmation_prompt=True)
    if not password:
        typer.echo("the keystore password is empty: give one", err=True)
        raise typer.Exit(2)
    target = file.expanduser()
    try:
        address = create_keystore_file(target, password)
    except FileExistsError:
        typer.echo(f"{target} exists: jamins keystore never overwrites a key", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"cannot write {target}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    typer.echo(address)


@cli.command("index")
def index_names(data_dir: DataDirOption = None) -> None:
    """Index the registrar's events into SQL up to the chain's head, then exit."""
    from app.cli_data import run_index

    settings = load_settings(data_dir=data_dir)
    configure_logging("warning", settings.log_format)
    run_index(settings)


@cli.command("export")
def export_names(
    file: Annotated[Path | None, typer.Argument(help="Output file; stdout by default.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write every record as names.json (the format of the original read_names.js)."""
    from app.cli_data import run_export

    settings = load_settings(data_dir=data_dir)
    configure_logging("warning", settings.log_format)
    run_export(settings, file)


@cli.command("import")
def import_names(
    file: Annotated[Path, typer.Argument(help="A names.json file.")],
    cache_only: Annotated[
        bool, typer.Option("--cache-only", help="Load the SQL cache only; write nothing on chain.")
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Take records whose key does not hash to addr or whose signature is not "
            "over the name (checked by default).",
        ),
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Register the records of a names.json on the chain (resumable), or preload the cache."""
    from app.cli_data import run_import

    settings = load_settings(data_dir=data_dir)
    configure_logging("warning", settings.log_format)
    run_import(settings, file, cache_only, verify=not no_verify)


def main() -> None:
    cli()
