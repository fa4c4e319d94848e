"""Real ZooKeeper servers as child processes, for tests, benchmarks and
``ipcsem.testing``: a standalone server or a loopback ensemble.

Every server is started from a config file (never the positional
command-line form: that one listens on every interface with tickTime 3000),
bound to 127.0.0.1 on free ports, with its own temporary data directory, a
bounded heap and the four-letter words enabled (``srvr`` finds the leader).
The data is thrown away, so the transaction log is not fsynced unless
``fsync=True`` (``forceSync``): tests and benchmarks then measure the
protocol, not a disk shared with other work.
Servers are ordinary child processes: tests SIGKILL and SIGSTOP them.

    with Ensemble(3) as ens:          # or Standalone()
        url = ens.url("/ipcsem")      # zookeeper://127.0.0.1:p1,.../ipcsem
        ens.leader().stop()           # SIGSTOP the leader

``find_java()`` and ``find_classpath()`` say what is missing (None) so a
test suite can skip with one line, or fail under CI.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TypeVar

JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
HEAP = "-Xmx256m"
TICK_MS = 1000


def find_java() -> str | None:
    """The java executable, or None."""
    return shutil.which("java")


def find_classpath() -> str | None:
    """The server classpath (Debian's ``zookeeper`` package), or None."""
    env = os.environ.get("IPCSEM_ZK_CLASSPATH")
    if env:
        return env
    if not os.path.exists(JARS[0]):
        return None
    return ":".join(j for j in JARS if os.path.exists(j))


def missing() -> str | None:
    """Why no server can be started here (one line), or None."""
    if find_java() is None:
        return "no java on PATH (apt-get install -y zookeeper brings a JRE)"
    if find_classpath() is None:
        return f"no ZooKeeper server jar at {JARS[0]} (apt-get install -y zookeeper)"
    return None


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together while chosen, so
    they are distinct; another process may still take one: callers retry)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter(port: int, word: str = "srvr", timeout: float = 1.0) -> str:
    """The server's answer to a four-letter word ('' if it does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


class Server:
    """One ZooKeeper server process (standalone, or one ensemble member)."""

    def __init__(self, workdir: Path, client_port: int, myid: int | None = None,
                 peers: list[tuple[int, int, int]] | None = None,
                 tick_ms: int = TICK_MS, fsync: bool = False) -> None:
        self.client_port = client_port
        self.myid = myid
        self.dir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={tick_ms}",
            f"dataDir={self.data}",
            f"clientPort={client_port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            # Tests create and delete many nodes; no need to keep snapshots.
            "autopurge.purgeInterval=0",
            # Without fsync (throw-away data): a write's latency is the
            # protocol's, not that of a disk shared with whatever else runs.
            f"forceSync={'yes' if fsync else 'no'}",
        ]
        if peers:
            assert myid is not None
            (self.data / "myid").write_text(f"{myid}\n")
            lines += ["initLimit=10", "syncLimit=5"]
            for sid, quorum, election in peers:
                lines.append(f"server.{sid}=127.0.0.1:{quorum}:{election}")
            self.main = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        else:
            self.main = "org.apache.zookeeper.server.ZooKeeperServerMain"
        self.config = workdir / "zoo.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        java, cp = find_java(), find_classpath()
        if java is None or cp is None:
            raise RuntimeError(missing())
        # C1 only and the serial GC: ready in ~0.5 s and light on two shared
        # cores; both benchmark contenders run on the same servers.  Under
        # setpriv --pdeathsig the server dies with the thread that started it
        # (a SIGKILLed test run leaves no server behind; start servers from a
        # thread that outlives them, as fixtures on the main thread do).
        guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*guard, java, HEAP, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Dzookeeper.admin.enableServer=false", "-cp", cp, self.main, str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def mode(self) -> str:
        """'standalone', 'leader', 'follower', or '' (not serving)."""
        for line in four_letter(self.client_port).splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGSTOP: the process freezes, its sockets stay open."""
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()


_G = TypeVar("_G", bound="_Group")


class _Group:
    servers: list[Server]

    def __init__(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="ipcsem-zk-")

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{s.client_port}" for s in self.servers)

    def url(self, chroot: str = "/ipcsem", **query: object) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"zookeeper://{self.hosts}{chroot}" + (f"?{q}" if q else "")

    def wait_serving(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            modes = [s.mode() if s.running() else "" for s in self.servers]
            if self._serving(modes):
                return
            for s in self.servers:
                if s.proc is not None and s.proc.poll() is not None:
                    raise RuntimeError(f"ZooKeeper server exited: see {s.log}:\n"
                                       + s.log.read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        raise RuntimeError(f"ZooKeeper not serving within {timeout} s (logs in {self._tmp})")

    def _serving(self, modes: list[str]) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        for s in self.servers:
            s.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self: _G) -> _G:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Standalone(_Group):
    """One server on a free loopback port."""

    def __init__(self, tick_ms: int = TICK_MS, start: bool = True, fsync: bool = False) -> None:
        super().__init__()
        self.servers = [Server(Path(self._tmp) / "s", free_ports(1)[0], tick_ms=tick_ms,
                               fsync=fsync)]
        if start:
            try:
                self.servers[0].start()
                self.wait_serving()
            except BaseException:
                self.close()
                raise

    @property
    def server(self) -> Server:
        return self.servers[0]

    def _serving(self, modes: list[str]) -> bool:
        return modes[0] == "standalone"


class Ensemble(_Group):
    """n servers (a quorum ensemble) on loopback."""

    def __init__(self, n: int = 3, tick_ms: int = TICK_MS, start: bool = True,
                 fsync: bool = False) -> None:
        super().__init__()
        ports = free_ports(3 * n)
        peers = [(i + 1, ports[n + i], ports[2 * n + i]) for i in range(n)]
        self.servers = [Server(Path(self._tmp) / f"s{i + 1}", ports[i], i + 1, peers, tick_ms,
                               fsync) for i in range(n)]
        if start:
            try:
                for s in self.servers:
                    s.start()
                self.wait_serving(60)
            except BaseException:
                self.close()
                raise

    def _serving(self, modes: list[str]) -> bool:
        return modes.count("leader") == 1 and modes.count("follower") == len(modes) - 1

    def leader(self, timeout: float = 30.0) -> Server:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for s in self.servers:
                if s.running() and s.mode() == "leader":
                    return s
            time.sleep(0.05)
        raise RuntimeError("no leader")

    def followers(self) -> list[Server]:
        lead = self.leader()
        return [s for s in self.servers if s is not lead]

    def wait_leader_among(self, servers: list[Server], timeout: float = 30.0) -> Server:
        """A leader elected among ``servers`` (e.g. after the old one froze)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for s in servers:
                if s.mode() == "leader":
                    return s
            time.sleep(0.05)
        raise RuntimeError("no new leader")


__all__ = ["Ensemble", "Server", "Standalone", "find_classpath", "find_java", "four_letter",
           "free_ports", "missing"]
