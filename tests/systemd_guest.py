"""A real systemd to run the service under: this machine's own system, booted in a container.

``systemd-nspawn`` boots an overlay of ``/``: the lower layer is the host's root file system, read
only, and the upper layer lives on a tmpfs, so whatever the guest installs or writes is gone when
it stops. Measured on Debian 12, where PID 1 is not systemd:

- nspawn refuses ``--directory=/``, and overlayfs refuses upper and work directories on the same
  file system as ``/``: hence the tmpfs. The mounts are made in a private mount namespace
  (``unshare --mount``) that dies with nspawn, so none can outlive the test on the host.
- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``, ``--register=no --keep-unit`` (there is no machined
  and no bus on the host) and ``--console=read-only`` (with ``passive`` and debug logging on,
  PID 1 blocked writing to the console).
- Stock nspawn forbids ``bpf()``, and the guest then ignores ``IPAddressDeny=`` with no warning;
  ``CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN`` and ``--system-call-filter=bpf`` make the firewall work.
- The network namespace is shared: 127.0.0.1 in the guest is the host's loopback.
- ``machinectl`` and ``systemd-run -M`` need machined; commands enter the guest with
  ``nsenter`` instead.
- The guest boots to ``basic.target``: the host's own services (a database server, timers) would
  start in the guest too, and the test needs none of them.

Nothing from outside the machine is needed in the guest: pip installs from a directory of wheels
built on the host (:func:`wheelhouse`), which is bound into the guest read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests import waiting

HOW_TO_RUN = (
    "run it on Linux as root with systemd-nspawn installed "
    "(apt-get install systemd-container), e.g. `sudo make test`"
)
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("systemd-nspawn", "nsenter", "unshare", "setpriv")


def unavailable(reason: str) -> NoReturn:
    """Skip with a one-line reason, except under CI, where a skip would hide a broken deployment."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, and this machine cannot run systemd: {reason}", pytrace=False)
    pytest.skip(f"{reason}; {HOW_TO_RUN}")


def missing_prerequisite() -> str | None:
    """Why this machine cannot boot the guest, found without trying; None when it may."""
    if sys.platform != "linux":
        return f"needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root (it mounts an overlay and boots a container)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if not any(Path(p).exists() for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")):
        return "systemd is not installed, so there is nothing to boot"
    if "overlay" not in Path("/proc/filesystems").read_text():
        with contextlib.suppress(OSError):
            subprocess.run(["modprobe", "overlay"], capture_output=True, timeout=30)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay file system"
    return None


# -- wheels -------------------------------------------------------------------------------------


def wheelhouse(repo: Path) -> Path:
    """The project's dependencies as wheels (plus setuptools, to build the checkout), for
    ``install.sh --wheels``. Built once with the test's own pip, which needs PyPI and nothing
    else, and kept under build/ (which git ignores) until pyproject.toml or the Python changes.
    The project's own wheel is left out: the guest builds the checkout under test."""
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()[:12]
    directory = repo / "build" / "systemd-test-wheels" / f"{version}-{key}"
    if (directory / ".complete").exists():
        return directory
    # Built aside and renamed into place, so a crash or a second test run at the same time never
    # leaves a half-filled directory that looks finished.
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        built = _pip_wheel(repo, partial)
        if built.returncode != 0:
            last = (built.stderr.strip().splitlines() or ["no output"])[-1]
            unavailable(f"could not build the wheels the guest installs from (needs PyPI): {last}")
        for own in partial.glob("aggregator-*.whl"):
            own.unlink()
        (partial / ".complete").write_text("built by tests/systemd_guest.py\n")
        with contextlib.suppress(OSError):  # another run finished first: use that one
            partial.rename(directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return directory


def _pip_wheel(repo: Path, into: Path) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="aggregator-wheel-src-") as stage:
        # A clean copy, so the build leaves no build/ or *.egg-info in the checkout.
        for part in ("pyproject.toml", "README.md", "aggregator"):
            source, target = repo / part, Path(stage) / part
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.exists():
                shutil.copy2(source, target)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
        command += ["--wheel-dir", str(into), stage, "setuptools>=68"]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            unavailable("building the wheels took over 5 minutes (is PyPI reachable?)")


# -- the guest ----------------------------------------------------------------------------------


class Guest:
    """One booted container. Use as a context manager: leaving it kills every process in the
    guest and ends its mount namespace, whatever happened inside."""

    BOOT_SECONDS = 60.0

    def __init__(self, binds: dict[Path, str]) -> None:
        self.binds = binds
        self.workdir = Path(tempfile.mkdtemp(prefix="aggregator-guest-"))
        # On the host this file sits under the mount point; nspawn's namespace never sees it.
        self.console = self.workdir / "console.log"
        self.name = f"aggregator-test-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.pid_namespace = ""
        self._followers: list[subprocess.Popen[str]] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Guest:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def boot(self) -> None:
        mount_and_exec = (
            'set -e; d="$1"; shift; mount -t tmpfs -o mode=0755 tmpfs "$d"; '
            'mkdir "$d/upper" "$d/work" "$d/root"; '
            'mount -t overlay overlay -o "lowerdir=/,upperdir=$d/upper,workdir=$d/work" "$d/root"; '
            'exec "$@"'
        )
        nspawn = [
            "systemd-nspawn", "--quiet", f"--directory={self.workdir}/root", "--boot",
            f"--machine={self.name}", "--register=no", "--keep-unit", "--console=read-only",
            "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN", "--system-call-filter=bpf",
            *(f"--bind-ro={source}:{target}" for source, target in self.binds.items()),
            "systemd.unit=basic.target",
        ]  # fmt: skip
        command = [
            # If the test process dies, nspawn is told to power the guest off.
            "setpriv", "--pdeathsig", "TERM",
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", mount_and_exec, "sh", str(self.workdir), *nspawn,
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", GUEST_PATH), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.console.open("wb") as console:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        self.leader = self._find_leader()
        self.pid_namespace = os.readlink(f"/proc/{self.leader}/ns/pid")
        if not poll(self._booted, self.BOOT_SECONDS):
            state = self.run(["systemctl", "is-system-running"]).stdout.strip()
            raise RuntimeError(
                f"the guest did not finish booting ({state}):\n{self.console_tail()}"
            )

    def _find_leader(self) -> int:
        """The guest's PID 1, as the host numbers it: nspawn's child in a new PID namespace."""
        assert self.proc is not None
        found: list[int] = []

        def child_is_init() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited at once:\n{self.console_tail()}")
            for entry in Path("/proc").glob("[0-9]*"):
                fields = _status(entry)
                inner_pid = fields.get("NSpid", "").split()[-1:]
                if fields.get("PPid") == str(self.proc.pid) and inner_pid == ["1"]:
                    found.append(int(entry.name))
                    return True
            return False

        if not poll(child_is_init, 20.0):
            raise RuntimeError(f"systemd-nspawn started no container:\n{self.console_tail()}")
        return found[0]

    def _booted(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the guest stopped while booting:\n{self.console_tail()}")
        state = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
        return state in ("running", "degraded")

    def close(self) -> None:
        """Kill the guest (its PID 1 takes every process in its namespace along) and wait for
        nspawn; its mount namespace, and with it the overlay and the tmpfs, ends with it."""
        for follower in self._followers:
            with contextlib.suppress(ProcessLookupError):
                follower.kill()
        if self.proc is not None:
            if self.proc.poll() is None and self.leader and self._is_ours(self.leader):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        for follower in self._followers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                follower.wait(timeout=5)
        # Nothing is mounted here on the host: the tmpfs lived in nspawn's namespace only.
        self.console.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.workdir.rmdir()

    def _is_ours(self, pid: int) -> bool:
        with contextlib.suppress(OSError):
            return os.readlink(f"/proc/{pid}/ns/pid") == self.pid_namespace
        return False

    def leftovers(self) -> list[str]:
        """Whatever the guest left on the host after :meth:`close`: processes and mounts."""
        found = []
        if self.proc is not None and self.proc.poll() is None:
            found.append(f"systemd-nspawn (pid {self.proc.pid}) still runs")
        for entry in Path("/proc").glob("[0-9]*/ns/pid"):
            with contextlib.suppress(OSError):
                if os.readlink(entry) == self.pid_namespace:
                    found.append(f"process {entry.parent.parent.name} of the guest still runs")
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if str(self.workdir) in line:
                found.append(f"mount left on the host: {line}")
        if self.workdir.exists():
            found.append(f"{self.workdir} was not removed")
        for follower in self._followers:
            if follower.poll() is None:
                found.append(f"{' '.join(follower.args)} (pid {follower.pid}) still runs")
        return found

    def console_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = self.console.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no console output)"

    # -- commands in the guest --------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it runs in the guest: every namespace entered, a clean environment."""
        env = [
            f"PATH={GUEST_PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
            # pip reads no config file: the wheels bound into the guest must be enough alone.
            "PIP_CONFIG_FILE=/dev/null",
        ]  # fmt: skip
        enter = ["nsenter", "-t", str(self.leader), "-m", "-p", "-u", "-i", "-n", "-C", "-r", "-w"]
        return [*enter, "--", "env", "-i", *env, *argv]

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), input=input, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip

    def sh(self, script: str, *, input: str | None = None, timeout: float = 60.0) -> str:
        """Run a shell script in the guest; its stdout, or an AssertionError with all output."""
        result = self.run(["sh", "-ec", script], input=input, timeout=timeout)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise AssertionError(f"in the guest, `{script}` exited {result.returncode}:\n{output}")
        return result.stdout

    def write(self, path: str, text: str, *, keep_mtime: bool = False) -> None:
        """Replace a file in the guest atomically; ``keep_mtime`` keeps the old file's mtime, so
        that only a SIGHUP can tell the service about the change."""
        keep = 'touch -r "$p" "$p.new"; ' if keep_mtime else ""
        self.sh(
            f'p={path}; cat > "$p.new"; chmod 0644 "$p.new"; {keep}mv "$p.new" "$p"', input=text
        )

    def follow_journal(self, unit: str) -> Journal:
        journalctl = ["journalctl", "--follow", "--all", "--lines=all", "--output=json"]
        follower = subprocess.Popen(
            self.command([*journalctl, f"--unit={unit}"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._followers.append(follower)
        return Journal(follower)


class Journal:
    """The entries of one unit, as they arrive; ``wait`` returns once an entry matches."""

    def __init__(self, follower: subprocess.Popen[str]) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(follower,), daemon=True)
        self._thread.start()

    def _read(self, follower: subprocess.Popen[str]) -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                message = entry.get("MESSAGE", "")
                if isinstance(message, list):  # journald sends non-text bytes as a list
                    entry["MESSAGE"] = bytes(message).decode(errors="replace")
                with self._lock:
                    self.entries.append(entry)
                waiting.changed()

    def messages(self, after: int = -1) -> list[str]:
        with self._lock:
            return [str(e.get("MESSAGE", "")) for e in self.entries[after + 1 :]]

    def find(self, text: str, after: int = -1, *, event: bool = False) -> int:
        """The first entry after ``after`` whose message contains ``text``; with ``event``, the
        first whose message is exactly ``text`` after the ``logger: `` that the service puts
        first (whatever module logged it)."""
        with self._lock:
            for index in range(after + 1, len(self.entries)):
                message = str(self.entries[index].get("MESSAGE", ""))
                if (message.partition(": ")[2] == text) if event else (text in message):
                    return index
        return -1

    def entry(self, index: int) -> dict[str, Any]:
        with self._lock:
            return self.entries[index]

    def message(self, index: int) -> str:
        return str(self.entry(index).get("MESSAGE", ""))

    def mark(self) -> int:
        """The index of the latest entry: pass it as ``after`` to look only at what comes next."""
        with self._lock:
            return len(self.entries) - 1

    def wait(
        self, text: str, after: int = -1, timeout: float = 30.0, *, event: bool = False
    ) -> int:
        if not waiting.wait_for(lambda: self.find(text, after, event=event) >= 0, timeout):
            recent = "\n".join(self.messages(max(after, self.mark() - 40)))
            raise AssertionError(f"the journal never said {text!r} in {timeout:g} s:\n{recent}")
        return self.find(text, after, event=event)

    def text(self, after: int = -1) -> str:
        return "\n".join(self.messages(after))


def _status(process: Path) -> dict[str, str]:
    """/proc/PID/status as a dict; empty when the process has gone meanwhile."""
    try:
        lines = (process / "status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def poll(condition: Callable[[], bool], seconds: float) -> bool:
    """For what nothing announces (a process appearing, systemd's state): look every 50 ms."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def booted(binds: dict[Path, str]) -> Iterator[Guest]:
    """A booted guest; when the machine cannot boot one, :func:`unavailable` says why."""
    guest = Guest(binds)
    try:
        guest.__enter__()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        leftovers = guest.leftovers()
        unavailable(
            f"booting a container failed: {e}" + (f" (left: {leftovers})" if leftovers else "")
        )
    try:
        yield guest
    finally:
        guest.close()
