"""Drive the real Jami daemon (`jamid`) over a private D-Bus session bus, for tests.

`JamiDaemon(root)` starts its own `dbus-daemon --session` (own config, unix socket under
`root`) and `/usr/libexec/jamid` with HOME and the XDG directories under `root`, so every
daemon starts with an empty name cache (the daemon caches every name answer on disk,
forever, per name server host). It talks to `cx.ring.Ring` with jeepney (pure Python),
and every call and every wait has a timeout: the daemon has no HTTP timeout of its own, so
a name server that hangs makes a test fail, never hang.

Statuses, as the daemon's D-Bus interface names them and as observed on Debian 12's
`jami-daemon` 20230206.0 (Jami Daemon 13.7.0), against jamins and against a stub server
(`tests/test_jamid.py` pins every row):

`registeredNameFound(s account, i state, s address, s name)`, the answer to `lookupName`
and `lookupAddress`. `name` is the name as the caller typed it (never the server's `name`
field); `address` is 40 hex without `0x`.

| state | meaning | GET /name/NAME answer | GET /addr/ADDR answer |
|---|---|---|---|
| 0 FOUND | found | 2xx, non-empty `addr` (`0x` optional) | exactly 200, non-empty `name` |
| 1 INVALID_NAME | invalid | never: the daemon's own check, no request | - |
| 2 NOT_FOUND | "available" | 2xx without `addr`; 400-499, 400 too | 200 without `name`; 4xx |
| 3 ERROR | error | non-JSON 2xx, 3xx (307 not followed), 5xx, no answer | 201, non-JSON 200, 5xx |

`nameRegistrationEnded(s account, i state, s name)`, the answer to
`registerName(s account, s password, s name)` (password "" for an unencrypted archive):

| state | meaning | POST /name/NAME answer |
|---|---|---|
| 0 SUCCESS | registered | 2xx with `{"success": true}` |
| 1 WRONG_PASSWORD | the archive did not open | none (local) |
| 2 INVALID_NAME | invalid name | none: the daemon's own check, no request |
| 3 ALREADY_TAKEN | taken | 403, 404, 409, 429 (any 4xx but 400/401); or taken in its cache |
| 4 NETWORK_ERROR | error | 2xx with `success` false or missing, non-JSON 2xx, 400, 401, 5xx |

`{"success": "true"}` (a string) throws in the daemon's HTTP thread: no signal, and the
daemon answers no name request again until restarted.

This version validates names itself (`[a-zA-Z0-9_-]{3,32}`; `élodie` is invalid) and
ASCII-lowercases them before any request; `registerName` answers ALREADY_TAKEN without a
request when its cache maps the name to another address; an account asks `/addr/<its ID>`
at start-up and takes its registered name from the answer.

Accounts are created with `addAccount` (type RING, unencrypted archive, `RingNS.uri` = the
name server under test; TURN, STUN, UPnP, DHT proxy and discovery off, and the DHT bootstrap
an unresolvable host: nothing but the name server is contacted). An account is usable once
`Account.username` holds its Jami ID (40 hex), about 2 s after creation on two cores; its
DHT stays "TRYING" (no network), which name operations do not need.

Stopping: SIGTERM, then SIGKILL after a grace period, for jamid and then dbus-daemon; both
are also started with a parent-death signal so a crashed test run leaves nothing behind.
`processes_under(root)` finds any process still mentioning a directory (command line or
environment), for tests that assert nothing was left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from jeepney import (
    DBusAddress,
    HeaderFields,
    MatchRule,
    Message,
    message_bus,
    new_method_call,
)
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import unwrap_msg

JAMID = Path("/usr/libexec/jamid")
DBUS_DAEMON = "dbus-daemon"
SERVICE = "cx.ring.Ring"
CONFIGURATION_MANAGER = DBusAddress(
    "/cx/ring/Ring/ConfigurationManager",
    bus_name=SERVICE,
    interface="cx.ring.Ring.ConfigurationManager",
)
JAMI_ID = re.compile(r"[0-9a-f]{40}")

# Seconds; generous for two loaded cores, still far below a pytest run's patience.
CALL_TIMEOUT = 10.0
SIGNAL_TIMEOUT = 20.0
START_TIMEOUT = 20.0
ACCOUNT_TIMEOUT = 60.0
STOP_GRACE = 5.0


class LookupState(IntEnum):
    """`registeredNameFound` state."""

    FOUND = 0
    INVALID_NAME = 1
    NOT_FOUND = 2
    ERROR = 3


class RegistrationState(IntEnum):
    """`nameRegistrationEnded` state."""

    SUCCESS = 0
    WRONG_PASSWORD = 1
    INVALID_NAME = 2
    ALREADY_TAKEN = 3
    NETWORK_ERROR = 4


@dataclass(frozen=True)
class Lookup:
    """One `registeredNameFound` signal."""

    state: LookupState
    address: str
    name: str


@dataclass(frozen=True)
class JamiAccountRef:
    """A Jami account living in a daemon: its daemon-local id and its Jami ID (40 hex)."""

    account_id: str
    jami_id: str


class JamidError(RuntimeError):
    """The daemon or its bus did not start, answer or stop as expected."""


def ensure_jamid_installed() -> None:
    """Refuse at once, in one line, when Debian's `jami-daemon` or `dbus` is missing: the
    Makefile's test-tools target installs them before the suite (a test never runs apt)."""
    if not JAMID.exists() or shutil.which(DBUS_DAEMON) is None:
        raise JamidError(
            f"{JAMID} and {DBUS_DAEMON} are needed: `make test` installs them "
            "(apt-get install jami-daemon dbus)"
        )


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when the test process dies (Linux)."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop_process(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


def processes_under(root: Path) -> list[tuple[int, str]]:
    """Live processes (pid, command line) whose command line or environment mentions root."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z" and (needle in cmdline or needle in environ):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


class JamiDaemon:
    """A private session bus and a jamid on it, everything under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.bus_address = ""
        self.bus_process: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "jamid.log"
        self._connection: DBusConnection | None = None
        self._signals: deque[Message] = deque(maxlen=100_000)
        self._signal_filter: Any = None
        self._logs: list[IO[bytes]] = []
        self._short_dir: Path | None = None

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> JamiDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the bus and jamid; return once `cx.ring.Ring` is on the bus."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (".config", ".local/share", ".cache"):
            (self.home / directory).mkdir(parents=True, exist_ok=True)
        self.bus_address = self._start_bus(timeout)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("XDG_", "DBUS_", "JAMI", "RING"))
        }
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local/share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            DBUS_SESSION_BUS_ADDRESS=self.bus_address,
        )
        jamid_log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(jamid_log)
        self.process = subprocess.Popen(
            # -c: log to the console (our file), -d: debug, -p: do not quit with a client.
            [str(JAMID), "-c", "-d", "-p"],
            env=env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=jamid_log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._connection = open_dbus_connection(bus=self.bus_address)
        rule = MatchRule(type="signal", interface=CONFIGURATION_MANAGER.interface)
        self._call_bus(message_bus.AddMatch(rule))
        self._signal_filter = self._connection.filter(rule, queue=self._signals)
        deadline = time.monotonic() + timeout
        while not self._call_bus(message_bus.NameHasOwner(SERVICE))[0]:
            if self.process.poll() is not None:
                raise JamidError(f"jamid exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise JamidError(f"{SERVICE} not on the bus after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _start_bus(self, timeout: float) -> str:
        config = self.root / "session-bus.conf"
        socket_path = self.root / "bus.socket"
        # sun_path holds 108 bytes, and D-Bus addresses would need escaping.
        if len(str(socket_path)) > 100 or not re.fullmatch(r"[\w/.-]+", str(socket_path)):
            self._short_dir = Path(tempfile.mkdtemp(prefix="jamid-bus-"))
            socket_path = self._short_dir / "bus.socket"
        config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n"
            "  <type>session</type>\n"
            f"  <listen>unix:path={socket_path}</listen>\n"
            "  <auth>EXTERNAL</auth>\n"
            '  <policy context="default">\n'
            '    <allow send_destination="*" eavesdrop="true"/>\n'
            '    <allow eavesdrop="true"/>\n'
            '    <allow own="*"/>\n'
            "  </policy>\n"
            "</busconfig>\n"
        )
        bus_log = open(self.root / "dbus-daemon.log", "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(bus_log)
        self.bus_process = subprocess.Popen(
            [DBUS_DAEMON, f"--config-file={config}", "--print-address", "--nofork"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=bus_log,
            preexec_fn=_die_with_parent,
        )
        assert self.bus_process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.bus_process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise JamidError(f"dbus-daemon printed no address within {timeout} s")
        address = self.bus_process.stdout.readline().decode().strip()
        if not address.startswith("unix:"):
            raise JamidError(f"dbus-daemon did not start: {address!r}")
        return address

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop jamid (SIGTERM, SIGKILL after `grace` s), then the bus. Idempotent."""
        if self._signal_filter is not None:
            self._signal_filter.close()
            self._signal_filter = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        _stop_process(self.process, grace)
        _stop_process(self.bus_process, grace)
        if self.bus_process is not None and self.bus_process.stdout is not None:
            self.bus_process.stdout.close()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def pids(self) -> list[int]:
        return [p.pid for p in (self.process, self.bus_process) if p is not None]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # -- D-Bus plumbing ---------------------------------------------------------------

    @property
    def connection(self) -> DBusConnection:
        if self._connection is None:
            raise JamidError("the daemon is not running")
        return self._connection

    def _call_bus(self, message: Message, timeout: float = CALL_TIMEOUT) -> tuple[Any, ...]:
        reply = self.connection.send_and_get_reply(message, timeout=timeout)
        return tuple(unwrap_msg(reply))

    def call(self, method: str, signature: str, *args: Any) -> Any:
        """Call a ConfigurationManager method; return its single result (or None)."""
        message = new_method_call(CONFIGURATION_MANAGER, method, signature or None, args)
        body = self._call_bus(message)
        return body[0] if len(body) == 1 else (body or None)

    def drain_signals(self) -> None:
        """Read every message already sent to us (signals land in the buffer), no waiting."""
        with contextlib.suppress(TimeoutError):
            while True:
                self.connection.recv_messages(timeout=0)

    def wait_signal(
        self,
        member: str,
        matches: Callable[[tuple[Any, ...]], bool] = lambda body: True,
        timeout: float = SIGNAL_TIMEOUT,
    ) -> tuple[Any, ...]:
        """The first buffered or coming signal `member` whose body `matches`; consumed."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain_signals()
            for message in list(self._signals):
                body = tuple(message.body)
                if message.header.fields.get(HeaderFields.member) == member and matches(body):
                    self._signals.remove(message)
                    return body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {member} signal within {timeout} s:\n{self.log_tail()}")
            with contextlib.suppress(TimeoutError):
                self.connection.recv_messages(timeout=min(remaining, 0.5))

    def _forget_signals(self, member: str, account_id: str) -> None:
        self.drain_signals()
        for message in list(self._signals):
            if (
                message.header.fields.get(HeaderFields.member) == member
                and message.body[0] == account_id
            ):
                self._signals.remove(message)

    # -- Jami operations --------------------------------------------------------------

    def add_account(
        self, *, nameserver: str, alias: str = "test", timeout: float = ACCOUNT_TIMEOUT
    ) -> JamiAccountRef:
        """Create a Jami account that uses `nameserver`; return once it has its Jami ID."""
        details = {
            "Account.type": "RING",
            "Account.alias": alias,
            "Account.archivePassword": "",
            "RingNS.uri": nameserver,
            # Nothing but the name server: no DHT bootstrap, TURN, STUN, UPnP, discovery.
            # An unresolvable bootstrap (RFC 6761 .invalid) also keeps the stop fast: with a
            # reachable one (even 127.0.0.1) the DHT shutdown waits about 8 s.
            "Account.hostname": "bootstrap.invalid",
            "Account.proxyEnabled": "false",
            "Account.dhtProxyListUrl": "",
            "Account.upnpEnabled": "false",
            "Account.peerDiscovery": "false",
            "Account.accountDiscovery": "false",
            "Account.accountPublish": "false",
            "TURN.enable": "false",
            "STUN.enable": "false",
        }
        account_id: str = self.call("addAccount", "a{ss}", details)
        deadline = time.monotonic() + timeout
        while True:
            username = self.account_details(account_id).get("Account.username", "")
            jami_id = username.removeprefix("ring:").removeprefix("jami:")
            if JAMI_ID.fullmatch(jami_id):
                return JamiAccountRef(account_id=account_id, jami_id=jami_id)
            if self.process is not None and self.process.poll() is not None:
                raise JamidError(f"jamid exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise JamidError(f"account {account_id} has no Jami ID after {timeout} s")
            time.sleep(0.1)

    def account_details(self, account_id: str) -> dict[str, str]:
        details: dict[str, str] = self.call("getAccountDetails", "s", account_id)
        return details

    def volatile_account_details(self, account_id: str) -> dict[str, str]:
        details: dict[str, str] = self.call("getVolatileAccountDetails", "s", account_id)
        return details

    def lookup_name(
        self, account_id: str, name: str, *, nameserver: str = "", timeout: float = SIGNAL_TIMEOUT
    ) -> Lookup:
        """`lookupName`, then its `registeredNameFound`."""
        self._forget_signals("registeredNameFound", account_id)
        if not self.call("lookupName", "sss", account_id, nameserver, name):
            raise JamidError(f"lookupName({name!r}) was refused")
        body = self.wait_signal(
            "registeredNameFound",
            lambda body: body[0] == account_id and body[3].casefold() == name.casefold(),
            timeout=timeout,
        )
        return Lookup(state=LookupState(body[1]), address=body[2], name=body[3])

    def lookup_address(
        self,
        account_id: str,
        address: str,
        *,
        nameserver: str = "",
        timeout: float = SIGNAL_TIMEOUT,
    ) -> Lookup:
        """`lookupAddress`, then its `registeredNameFound`."""
        self._forget_signals("registeredNameFound", account_id)
        if not self.call("lookupAddress", "sss", account_id, nameserver, address):
            raise JamidError(f"lookupAddress({address!r}) was refused")
        body = self.wait_signal(
            "registeredNameFound",
            lambda body: body[0] == account_id and body[2] == address,
            timeout=timeout,
        )
        return Lookup(state=LookupState(body[1]), address=body[2], name=body[3])

    def register_name(
        self, account_id: str, name: str, *, password: str = "", timeout: float = SIGNAL_TIMEOUT
    ) -> RegistrationState:
        """`registerName(account, password, name)`, then its `nameRegistrationEnded`."""
        self._forget_signals("nameRegistrationEnded", account_id)
        if not self.call("registerName", "sss", account_id, password, name):
            raise JamidError(f"registerName({name!r}) was refused")
        body = self.wait_signal(
            "nameRegistrationEnded", lambda body: body[0] == account_id, timeout=timeout
        )
        return RegistrationState(body[1])
