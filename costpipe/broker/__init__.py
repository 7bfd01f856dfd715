"""The local Apache Kafka (KRaft) that costpipe starts by itself, or the cluster it was given.

Why embedded: `make run` and `make test` must work from a clean clone with only Java and Maven
on the machine. The broker jars are resolved once with Maven into a cache that outlives the
repository (`settings.cache_dir`: `~/.cache/costpipe`, or `COSTPIPE_CACHE_DIR`); the broker's
config, data, pid file and logs live in the project's state folder (`state_dir/kafka/`).

When `KAFKA_BOOTSTRAP_SERVERS` (or `kafka.bootstrap_servers`) is set, nothing is started: the
cluster is only checked and the costpipe topics are created on it.

Python API (used by the CLI, the test fixtures and `costpipe run`):
`ensure_running(settings) -> bootstrap`, `stop(settings)`, `status(settings)`,
`ensure_topics(settings)`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from costpipe.broker.secure import SecureListener, server_properties
from costpipe.core import limits
from costpipe.core.kafka_clients import SecurityLatch, list_topics_or_explain, quiet_admin
from costpipe.core.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

POM = Path(__file__).parent / "pom.xml"
JVM_HEAP = "-Xmx768m"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
MAVEN_TIMEOUT_S = 600.0

JAVA_HINT = "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"
MAVEN_HINT = "install Apache Maven 3.6+ (e.g. `apt-get install maven`)"



class BrokerError(RuntimeError):
    """A broker problem, worded as one line that says what to do."""


class SecurityError(BrokerError):
    """The cluster answers but refuses these credentials or is not trusted (the line names
    the setting to fix)."""


@dataclass
class BrokerStatus:
    running: bool
    bootstrap: str
    managed: bool  # True: the local broker costpipe starts; False: an external cluster
    pid: int | None = None
    topics: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.root / "log4j.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def stdout_log(self) -> Path:
        return self.root / "broker.log"

    @property
    def cluster_id(self) -> Path:
        return self.root / "cluster.id"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def _paths(settings: Settings) -> _Paths:
    return _Paths(Path(settings.state_dir).expanduser().resolve() / "kafka")


# ---------------------------------------------------------------- public API


def topic_names(settings: Settings) -> list[str]:
    """Every costpipe topic named in settings (all fields of `[topics]` but the count)."""
    return list(settings.topics.partition_counts())


def ensure_running(settings: Settings, *, console: Console | None = None,
                   secure: SecureListener | None = None) -> str:
    """Make sure a broker answers and the costpipe topics exist; return the bootstrap string.

    Local mode starts the broker unless the one in this state folder (or another Kafka on the
    configured port) already answers, so calling it twice never starts a second broker.
    `secure` adds a SASL_SSL listener with ACLs enforced (`costpipe.broker.secure`) to a
    broker this call starts.
    """
    if not settings.uses_local_broker:
        if not wait_ready(settings, timeout=20.0, fail_fast=True):
            raise BrokerError(
                f"Kafka at {settings.bootstrap_servers} does not answer; check "
                "KAFKA_BOOTSTRAP_SERVERS / kafka.bootstrap_servers and the network"
            )
        ensure_topics(settings)
        return settings.bootstrap_servers
    paths = _paths(settings)
    paths.root.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock):
        pid = _our_pid(paths)
        if pid is None:
            _refuse_busy_ports(settings)
            if not _port_open(settings.kafka.local_port):
                pid = _start(settings, paths, console, secure)
        if not wait_ready(settings, timeout=READY_TIMEOUT_S, pid=pid):
            died = pid is not None and not _alive(pid)
            why = "exited during start-up" if died else (
                f"did not answer within {READY_TIMEOUT_S:.0f} s")
            last = _last_error(paths.stdout_log)
            raise BrokerError(
                f"the local Kafka on {settings.bootstrap_servers} {why}"
                f"{f' ({last})' if last else ''}; see {paths.stdout_log} and "
                f"{paths.logs}/server.log"
            )
    ensure_topics(settings)
    return settings.bootstrap_servers


def stop(settings: Settings, *, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local broker of this state folder (SIGTERM, then SIGKILL); True if one ran.

    Only a broker that costpipe started (pid file + a matching command line) is ever signalled.
    """
    if not settings.uses_local_broker:
        return False
    paths = _paths(settings)
    if not paths.root.exists():
        return False
    with _locked(paths.lock):
        pid = _our_pid(paths)
        if pid is None:
            paths.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
        paths.pid_file.unlink(missing_ok=True)
        return True


def status(settings: Settings) -> BrokerStatus:
    """Whether the broker answers, where, and which costpipe topics exist."""
    managed = settings.uses_local_broker
    pid = _our_pid(_paths(settings)) if managed else None
    if managed and pid is None and not _port_open(settings.kafka.local_port):
        return BrokerStatus(False, settings.bootstrap_servers, True, None, [], "stopped")
    try:
        existing = _list_topics(settings, timeout=5.0)
    except SecurityError as exc:
        return BrokerStatus(False, settings.bootstrap_servers, managed, pid, [], str(exc))
    except KafkaException as exc:
        detail = f"not answering: {_kafka_error_text(exc)}"
        return BrokerStatus(False, settings.bootstrap_servers, managed, pid, [], detail)
    wanted = set(topic_names(settings))
    topics = sorted(t for t in existing if t in wanted)
    if managed and pid is None:
        detail = "running (a Kafka on this port not started from this state folder)"
    else:
        detail = "running"
    return BrokerStatus(True, settings.bootstrap_servers, managed, pid, topics, detail)


def ensure_topics(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create the missing costpipe topics (idempotent, safe to race); return those created."""
    admin = quiet_admin(settings)
    existing = admin.list_topics(timeout=timeout).topics
    counts = settings.topics.partition_counts()
    stage = settings.topics.stage_topics()
    for name, wanted in counts.items():
        if name in existing and len(existing[name].partitions) != wanted:
            key = "topics.stage_partitions" if name in stage else "topics.partitions"
            raise BrokerError(
                f"topic {name} has {len(existing[name].partitions)} partitions but "
                f"{key} makes it {wanted}: every stage is keyed by partition, so they "
                f"must agree (set {key} to match, or delete the costpipe topics "
                "and their -changelog topics and start again)")
    missing = [name for name in counts if name not in existing]
    if not missing:
        return []
    new = [
        NewTopic(
            name,
            num_partitions=counts[name],
            replication_factor=-1 if not settings.uses_local_broker else 1,
            config={"max.message.bytes": str(limits.request_bytes(settings.kafka)),
                    **({"cleanup.policy": "compact"} if name == settings.topics.members
                       else {})},
        )
        for name in missing
    ]
    created: list[str] = []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if getattr(error, "name", lambda: "")() != "TOPIC_ALREADY_EXISTS":
                raise BrokerError(
                    f"could not create topic {name} on {settings.bootstrap_servers}: "
                    f"{_kafka_error_text(exc)}"
                ) from None
    return created


def wait_ready(settings: Settings, *, timeout: float, pid: int | None = None,
               fail_fast: bool = False) -> bool:
    """Poll until the cluster answers a metadata request; False on timeout or broker death.

    `fail_fast`: a refused password or an untrusted certificate raises `SecurityError` at once
    (waiting longer would not help)."""
    deadline = time.monotonic() + timeout
    first = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            return False
        if _port_open(int(port or 9092), host or "127.0.0.1"):
            try:
                _list_topics(settings, timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
                return True
            except SecurityError:
                if fail_fast:
                    raise
            except KafkaException:
                pass
        time.sleep(0.25)
    return False


def cache_dir(settings: Settings) -> Path:
    """Where the Maven-resolved broker jars live (`cache_dir`, env COSTPIPE_CACHE_DIR).

    Outside the repository so `make clean` and fresh clones don't pay for Maven again.
    """
    return Path(settings.cache_dir).expanduser()


def resolve_jars(settings: Settings, *, console: Console | None = None) -> Path:
    """Return the folder of broker jars, running Maven the first time only (~25 s)."""
    version = settings.kafka.kafka_version
    lib = cache_dir(settings) / f"kafka-{version}" / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    mvn = _require("mvn", MAVEN_HINT)
    lib.parent.mkdir(parents=True, exist_ok=True)
    with _locked(lib.parent / ".lock"):
        if marker.exists():
            return lib
        staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
        command = [
            mvn, "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
            "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
        ]
        with _spinner(console, f"Resolving Apache Kafka {version} with Maven (first run only)"):
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False
            )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = _last_line(result.stdout + result.stderr) or f"exit status {result.returncode}"
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} ({tail}); "
                "check network access to Maven Central or ~/.m2/settings.xml mirrors"
            )
        if lib.exists():
            shutil.rmtree(lib)
        staging.rename(lib)
        marker.write_text(version + "\n")
    return lib


# ---------------------------------------------------------------- starting


def _start(settings: Settings, paths: _Paths, console: Console | None,
           secure: SecureListener | None) -> int:
    java = _require("java", JAVA_HINT)
    lib = resolve_jars(settings, console=console)
    _write_configs(settings, paths, secure)
    classpath = f"{lib}/*"
    log4j = f"-Dlog4j.configuration=file:{paths.log4j_properties}"
    logs_dir = f"-Dkafka.logs.dir={paths.logs}"
    if not (paths.data / "meta.properties").exists():
        result = subprocess.run(
            [java, "-cp", classpath, log4j, logs_dir, "kafka.tools.StorageTool", "format",
             "--ignore-formatted", "-t", _cluster_id(paths), "-c", str(paths.server_properties)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage in {paths.data} failed: "
                f"{_last_line(result.stdout + result.stderr)}"
            )
    with paths.stdout_log.open("ab") as out:
        process = subprocess.Popen(
            [java, JVM_HEAP, "-Djava.awt.headless=true", "-cp", classpath, log4j, logs_dir,
             "kafka.Kafka", str(paths.server_properties)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=paths.root, start_new_session=True,
        )
    paths.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def _write_configs(settings: Settings, paths: _Paths, secure: SecureListener | None) -> None:
    port, ctl = settings.kafka.local_port, settings.kafka.local_controller_port
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    listeners = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if secure is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure.port}"
        protocols += ",SASL_SSL:SASL_SSL"
    extra = "".join(f"{key}={value}\n" for key, value in
                    (server_properties(secure) if secure else {}).items())
    server = f"""\
# Written by costpipe (costpipe.broker) on every `costpipe kafka up`; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{ctl}
listeners={listeners},CONTROLLER://127.0.0.1:{ctl}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map={protocols}
log.dirs={paths.data}
num.partitions={settings.topics.partitions}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes={limits.broker_bytes(settings.kafka)}
replica.fetch.max.bytes={limits.broker_bytes(settings.kafka)}
log.retention.hours=168
{extra}"""
    log4j = f"""\
# Written by costpipe: INFO to logs/server.log (rolled), warnings also to broker.log (stdout).
log4j.rootLogger=INFO, file, stdout
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={paths.logs}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.Threshold=WARN
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""
    paths.server_properties.write_text(server)
    paths.log4j_properties.write_text(log4j)


def _cluster_id(paths: _Paths) -> str:
    """Kafka's cluster id format: a random UUID as unpadded URL-safe base64 (22 chars).

    Never one that starts with "-" (1 in 64): kafka-storage would read it as an option ("argument
    --cluster-id/-t: expected one argument", seen once in CI). Kafka's own Uuid.randomUuid skips
    those too. A saved one that does could never have formatted the storage, so it is replaced.
    """
    if paths.cluster_id.exists():
        saved = paths.cluster_id.read_text().strip()
        if saved and not saved.startswith("-"):
            return saved
    cluster = "-"
    while cluster.startswith("-"):
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    paths.cluster_id.write_text(cluster + "\n")
    return cluster


def _refuse_busy_ports(settings: Settings) -> None:
    """A Kafka already on our port is reused; anything else there is a clear error."""
    port, ctl = settings.kafka.local_port, settings.kafka.local_controller_port
    if _port_open(port):
        if wait_ready(settings, timeout=5.0):
            return
        raise BrokerError(
            f"port {port} is in use by a program that is not Kafka; stop it or set "
            "kafka.local_port (COSTPIPE_KAFKA__LOCAL_PORT)"
        )
    if _port_open(ctl):
        raise BrokerError(
            f"controller port {ctl} is in use; stop that program or set "
            "kafka.local_controller_port (COSTPIPE_KAFKA__LOCAL_CONTROLLER_PORT)"
        )


# ---------------------------------------------------------------- processes


def _our_pid(paths: _Paths) -> int | None:
    """The pid in the pid file if that process is alive and is this folder's broker."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _alive(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return None
        if b"kafka.Kafka" not in args or str(paths.server_properties).encode() not in args:
            return None  # the pid was reused by another program
    return pid


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (reaps our own children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


# ---------------------------------------------------------------- helpers


def _require(tool: str, hint: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise BrokerError(
            f"`{tool}` is not on PATH; {hint}, or set KAFKA_BOOTSTRAP_SERVERS to use an "
            "existing cluster"
        )
    return found


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _list_topics(settings: Settings, *, timeout: float) -> list[str]:
    """Topic names the cluster shows these credentials; `SecurityError` when it refuses them."""
    latch = SecurityLatch(settings)
    try:
        return list(list_topics_or_explain(quiet_admin(settings, latch), latch, timeout).topics)
    except KafkaException:
        if latch.hint:
            raise SecurityError(latch.hint) from None
        raise


def _kafka_error_text(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    text = getattr(error, "str", None)
    return text() if callable(text) else str(error)


def _last_error(log: Path) -> str:
    """The last ERROR/FATAL line of the broker's stdout log, shortened, or ''."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    errors = [line for line in lines if " ERROR " in line or " FATAL " in line
              or "Exception" in line]
    return errors[-1].strip()[:300] if errors else ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock: concurrent `up`/`down` calls take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _spinner(console: Console | None, text: str) -> Iterator[None]:
    """A rich spinner when a console is given (CLI), silence otherwise (tests, libraries)."""
    if console is None:
        yield
        return
    with console.status(text, spinner="dots"):
        yield
