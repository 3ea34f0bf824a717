"""deploy/: the unit's measured hardening, the installer in a temporary root, the Slack manifest."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "aggregator.service"
INSTALL = DEPLOY / "install.sh"
SHIPPED_BINARY = "/opt/aggregator/venv/bin/aggregator"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows a key to repeat, so no dict."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_entries(UNIT.read_text()) if s == section and k == key]


def analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


# -- the unit, measured ----------------------------------------------------------------------------


@needs_analyze
def test_security_exposure_is_at_most_1_2() -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(UNIT))
    found = re.search(r"Overall exposure level for aggregator\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    score = float(found.group(1))
    assert score <= 1.2, f"exposure {score}:\n{result.stdout}"


def checkable_copy(directory: Path, text: str) -> Path:
    """The unit as shipped, except that its commands name a binary that exists on this machine.

    `systemd-analyze verify` fails on a command that is not executable, and the venv under
    /opt/aggregator exists only on an installed host. Swapping in this test's own interpreter
    changes nothing else: every other line is verified exactly as shipped. (A --root staging tree
    does not work: verify then also looks for /bin/kill and sysinit.target inside it.)
    """
    for key in ("ExecStart", "ExecReload"):
        assert text.count(f"{key}={SHIPPED_BINARY} ") == 1, key
    copy = directory / "aggregator.service"  # verify derives the unit name from the file name
    copy.write_text(text.replace(f"={SHIPPED_BINARY} ", f"={sys.executable} "))
    return copy


@needs_analyze
def test_verify_prints_nothing(tmp_path: Path) -> None:
    copy = checkable_copy(tmp_path, UNIT.read_text())
    result = analyze("verify", str(copy), cwd=tmp_path)
    # verify exits 0 with only warnings on a typo, so any output at all is a failure.
    assert (result.stdout + result.stderr) == ""
    assert result.returncode == 0


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    # Proof that the check above can fail: a misspelt directive makes verify speak.
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    copy = checkable_copy(tmp_path, text)
    result = analyze("verify", str(copy), cwd=tmp_path)
    assert "ProtectSystm" in result.stdout + result.stderr


def test_unit_runs_the_cli_as_a_notify_service_with_the_agreed_paths() -> None:
    (exec_start,) = values("ExecStart")
    argv = exec_start.split()
    assert argv[0] == SHIPPED_BINARY
    assert argv[1:] == [
        "--config",
        "/etc/aggregator",
        "--db",
        "${STATE_DIRECTORY}/aggregator.db",
        "run",
    ]
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    assert values("WatchdogSec")
    # Reload validates first (a failed command fails the reload, visibly), then signals.
    assert values("ExecReload") == [
        f"{SHIPPED_BINARY} --config /etc/aggregator check-config",
        "/bin/kill -HUP $MAINPID",
    ]
    assert values("Restart") == ["on-failure"]
    # Restarting fixes neither an invalid config (EX_CONFIG) nor a token systemd cannot load.
    assert set(values("RestartPreventExitStatus")[0].split()) == {"78", "243"}
    assert values("DynamicUser") == ["yes"]
    assert values("StateDirectory") == ["aggregator"]
    assert values("ConfigurationDirectory") == ["aggregator"]
    assert values("MemoryMax")
    assert values("TimeoutStopSec")


def test_token_comes_through_a_credential_and_never_the_environment() -> None:
    assert values("LoadCredential") == [
        "slack-bot-token:/etc/aggregator/credentials/slack-bot-token"
    ]
    for environment in values("Environment"):
        assert "TOKEN" not in environment.upper()
        assert "xox" not in environment
    assert not values("EnvironmentFile")


def test_the_sandbox_is_complete() -> None:
    expected = {
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "NoNewPrivileges": "yes",
        "PrivateDevices": "yes",
        "ProtectHome": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "UMask": "0077",
        "DevicePolicy": "closed",
        "PrivateUsers": "yes",
    }
    for key, value in expected.items():
        assert values(key) == [value], key
    filters = values("SystemCallFilter")
    assert filters[0] == "@system-service"
    assert set(filters[1].lstrip("~").split()) == {"@privileged", "@resources"}
    denied = " ".join(values("IPAddressDeny")).split()
    assert {"localhost", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(denied)
    assert values("IPAddressAllow") == ["127.0.0.53"]  # DNS through systemd-resolved's stub


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, importlib, json, pkgutil, sys
    if sys.argv[1] == "mdwe":
        libc = ctypes.CDLL(None, use_errno=True)
        # PR_SET_MDWE (65) with PR_MDWE_REFUSE_EXEC_GAIN: the kernel's MemoryDenyWriteExecute.
        if libc.prctl(65, 1, 0, 0, 0) != 0:
            print(json.dumps({"unsupported": ctypes.get_errno()}))
            sys.exit(0)
        import mmap
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            sys.exit("a writable, executable mapping was allowed: the probe is not active")
        except OSError:
            pass
    import sqlite3, ssl
    from concurrent.futures import ProcessPoolExecutor
    ssl.create_default_context()
    db = sqlite3.connect(":memory:")
    db.execute("create virtual table t using fts5(x)")
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(abs, [-1, -2])) == [1, 2]
    libraries = ["httpx", "feedparser", "slack_sdk", "sqlite_utils", "apscheduler", "click",
                 "ahocorasick", "datasketch"]
    imported = {}
    for name in libraries:
        try:
            importlib.import_module(name)
            imported[name] = "ok"
        except ImportError as e:
            imported[name] = "missing: " + str(e)
    try:
        import feedparser
        feed = feedparser.parse(b"<rss><channel><item><title>t</title></item></channel></rss>")
        assert feed.entries[0].title == "t"
    except ImportError:
        pass
    import aggregator
    for info in pkgutil.walk_packages(aggregator.__path__, "aggregator."):
        try:
            importlib.import_module(info.name)
            imported[info.name] = "ok"
        except Exception as e:
            imported[info.name] = type(e).__name__ + ": " + str(e)
    print(json.dumps(imported))
    """
)


def test_python_and_every_module_work_under_memory_deny_write_execute() -> None:
    # The unit sets MemoryDenyWriteExecute=yes. Without systemd here, the same kernel rule is
    # applied with prctl(PR_SET_MDWE); whatever imports and runs without it must do so with it.
    import json

    def probe(mode: str) -> dict[str, object]:
        result = subprocess.run(
            [sys.executable, "-c", MDWE_PROBE, mode],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
        return parsed

    with_mdwe = probe("mdwe")
    if "unsupported" in with_mdwe:
        pytest.skip(f"this kernel has no PR_SET_MDWE (errno {with_mdwe['unsupported']})")
    assert with_mdwe == probe("plain")
    assert with_mdwe["aggregator.service.sdnotify"] == "ok"
    assert with_mdwe["aggregator.service.logs"] == "ok"


# -- the installer in a temporary root -------------------------------------------------------------


def shipped_configs() -> list[Path]:
    configs = sorted((REPO / "config").glob("*.toml"))
    return configs or sorted((REPO / "aggregator" / "config" / "defaults").glob("*.toml"))


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real installer into ``root``.

    --skip-pip: pip needs a package index (the build backend and the dependencies), which these
    machines cannot reach. Everything else runs for real, including creating the virtualenv.
    """
    command = ["bash", str(INSTALL), "--root", str(root), "--python", sys.executable, "--skip-pip"]
    result = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path outside the virtualenv with its mode and content digest (or link target)."""
    tree: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("opt/aggregator/venv/"):
            continue
        info = path.lstat()
        if path.is_symlink():
            detail = "-> " + os.readlink(path)
        elif path.is_file():
            detail = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            detail = "dir"
        tree[relative] = (stat.S_IMODE(info.st_mode), detail)
    return tree


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def add_state(root: Path) -> Path:
    """What systemd leaves after a run with DynamicUser=yes and StateDirectory=aggregator."""
    private = root / "var/lib/private/aggregator"
    private.mkdir(parents=True)
    database = private / "aggregator.db"
    database.write_bytes(b"SQLite format 3\x00")
    (root / "var/lib/aggregator").symlink_to("private/aggregator")
    return database


@pytest.fixture
def configs() -> list[Path]:
    found = shipped_configs()
    if not found:
        pytest.skip("the checkout ships no config/*.toml yet")
    return found


def test_install_puts_everything_in_place_and_is_idempotent(
    tmp_path: Path, configs: list[Path]
) -> None:
    root = tmp_path / "root"
    first = install(root)
    conf = root / "etc/aggregator"
    for shipped in configs:
        installed = conf / shipped.name
        assert installed.read_bytes() == shipped.read_bytes()
        assert mode(installed) == 0o644
    assert mode(conf) == 0o755  # what ConfigurationDirectory= expects, or systemd warns
    assert mode(conf / "credentials") == 0o700
    unit = root / "etc/systemd/system/aggregator.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert mode(unit) == 0o644
    python = root / "opt/aggregator/venv/bin/python"
    ran = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True)
    assert ran.stdout.decode().strip() == str(root / "opt/aggregator/venv")

    # It tells the operator how to hand over the token and start the service.
    out = first.stdout
    assert "umask 077" in out and "/etc/aggregator/credentials/slack-bot-token" in out
    assert "systemd-creds encrypt --name=slack-bot-token" in out
    assert "LoadCredentialEncrypted=slack-bot-token:" in out
    assert "systemctl enable --now aggregator" in out
    assert "journalctl -u aggregator" in out
    assert str(root) not in out.split("Next steps:")[1]  # commands name the real paths

    before = snapshot(root)
    venv_inode = python.parent.parent.stat().st_ino
    second = install(root)
    assert snapshot(root) == before
    assert python.parent.parent.stat().st_ino == venv_inode
    assert "reusing the virtualenv" in second.stdout
    assert "unchanged /etc/systemd/system/aggregator.service" in second.stdout


def test_an_edited_config_is_never_overwritten(tmp_path: Path, configs: list[Path]) -> None:
    root = tmp_path / "root"
    install(root)
    edited = root / "etc/aggregator" / configs[0].name
    mine = edited.read_text() + "\n# my own edit\n"
    edited.write_text(mine)
    token = root / "etc/aggregator/credentials/slack-bot-token"
    token.write_text("xoxb-not-a-real-token")
    token.chmod(0o644)  # a careless copy; the installer tightens it

    result = install(root)
    assert edited.read_text() == mine
    dist = edited.with_name(edited.name + ".dist")
    assert dist.read_bytes() == configs[0].read_bytes()
    assert f"kept your edited /etc/aggregator/{configs[0].name}" in result.stdout
    assert token.read_text() == "xoxb-not-a-real-token"
    assert mode(token) == 0o600

    # Back to the shipped text: the .dist copy has nothing left to say.
    edited.write_bytes(configs[0].read_bytes())
    install(root)
    assert not dist.exists()


def test_the_shipped_models_are_installed_beside_topics_toml_and_a_retrained_one_kept(
    tmp_path: Path, configs: list[Path]
) -> None:
    shipped = sorted((REPO / "config" / "models").glob("*.json"))
    if not shipped:
        pytest.skip("the checkout ships no config/models/*.json")
    root = tmp_path / "root"
    first = install(root)
    models = root / "etc/aggregator/models"
    assert sorted(p.name for p in models.glob("*.json")) == [p.name for p in shipped]
    for model in shipped:
        assert (models / model.name).read_bytes() == model.read_bytes()
        assert mode(models / model.name) == 0o644
    assert f"installed /etc/aggregator/models/{shipped[0].name}" in first.stdout
    retrained = models / shipped[0].name
    retrained.write_text('{"retrained": "by the team"}')
    result = install(root)
    assert retrained.read_text() == '{"retrained": "by the team"}'
    dist = retrained.with_name(retrained.name + ".dist")
    assert dist.read_bytes() == shipped[0].read_bytes()
    assert f"kept your edited /etc/aggregator/models/{shipped[0].name}" in result.stdout


def test_uninstall_keeps_config_token_and_data(tmp_path: Path, configs: list[Path]) -> None:
    root = tmp_path / "root"
    install(root)
    database = add_state(root)
    token = root / "etc/aggregator/credentials/slack-bot-token"
    token.write_text("xoxb-not-a-real-token")
    result = install(root, "--uninstall")
    assert not (root / "etc/systemd/system/aggregator.service").exists()
    assert not (root / "opt/aggregator").exists()
    assert database.read_bytes() == b"SQLite format 3\x00"
    assert (root / "var/lib/aggregator").is_symlink()
    assert token.exists()
    assert all((root / "etc/aggregator" / c.name).exists() for c in configs)
    assert "--purge" in result.stdout

    install(root, "--uninstall")  # again: nothing left to remove is not an error
    install(root)  # and a reinstall picks the kept config and data back up
    assert database.exists()
    assert (root / "etc/systemd/system/aggregator.service").exists()


def test_purge_removes_config_and_data_and_nothing_else(
    tmp_path: Path, configs: list[Path]
) -> None:
    root = tmp_path / "root"
    install(root)
    add_state(root)
    dropin = root / "etc/systemd/system/aggregator.service.d"
    dropin.mkdir()
    (dropin / "override.conf").write_text("[Service]\nMemoryMax=1G\n")
    neighbours = [root / "etc/systemd/system/other.service", root / "var/lib/other/data"]
    for path in neighbours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not ours")

    install(root, "--purge")
    for gone in (
        "etc/aggregator",
        "etc/systemd/system/aggregator.service",
        "etc/systemd/system/aggregator.service.d",
        "opt/aggregator",
        "var/lib/aggregator",
        "var/lib/private/aggregator",
    ):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert all(path.read_text() == "not ours" for path in neighbours)


def test_a_broken_virtualenv_is_rebuilt(tmp_path: Path, configs: list[Path]) -> None:
    root = tmp_path / "root"
    install(root)
    python = root / "opt/aggregator/venv/bin/python"
    python.unlink()
    python.symlink_to(tmp_path / "python-that-was-removed-by-an-os-upgrade")
    result = install(root)
    assert "broken; recreating" in result.stdout
    assert subprocess.run([str(python), "-c", ""]).returncode == 0


def test_bad_invocations_fail_clearly(tmp_path: Path) -> None:
    result = install(tmp_path / "root", "--frobnicate", check=False)
    assert result.returncode != 0
    assert "unknown option: --frobnicate" in result.stderr
    result = install(tmp_path / "root", "--source", str(tmp_path), check=False)
    assert result.returncode != 0
    assert "not an aggregator checkout" in result.stderr
    result = install(tmp_path / "root", "--wheels", str(tmp_path / "nowhere"), check=False)
    assert result.returncode != 0
    assert f"--wheels {tmp_path / 'nowhere'} is not a directory" in result.stderr
    # An offline install builds the package from the checkout, which needs setuptools too.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "httpx-0.28.1-py3-none-any.whl").write_bytes(b"")
    result = install(tmp_path / "root", "--wheels", str(wheels), check=False)
    assert result.returncode != 0
    assert "has no setuptools wheel; add it: python3 -m pip wheel" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root+setpriv")
def test_refuses_to_touch_the_real_system_without_root() -> None:
    # As nobody, fed on stdin (pytest's tmp dirs are private to root).
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s"],
        input=INSTALL.read_text(),
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert result.returncode != 0
    assert "run me as root" in result.stderr


def test_installer_shell_is_sound() -> None:
    assert subprocess.run(["bash", "-n", str(INSTALL)]).returncode == 0
    assert os.access(INSTALL, os.X_OK)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


# -- the Slack app manifest ----------------------------------------------------------------------


def test_manifest_asks_for_exactly_the_scopes_the_bot_uses() -> None:
    text = (DEPLOY / "slack-app-manifest.yml").read_text()
    bot = text.split("    bot:\n", 1)[1].split("settings:", 1)[0]
    scopes = [line.strip()[2:] for line in bot.splitlines() if line.strip().startswith("- ")]
    assert sorted(scopes) == sorted(
        [
            "chat:write",
            "chat:write.public",
            "channels:history",
            "groups:history",
            "channels:read",
            "groups:read",
        ]
    )
    assert "\t" not in text  # YAML forbids tabs for indentation


def test_deploy_readme_covers_the_operator_tasks() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in (
        "Install as a service",
        "install.sh",
        "systemd-creds",
        "systemctl reload aggregator",
        "journalctl -u aggregator",
        "--uninstall",
        "--purge",
    ):
        assert needle in text, needle
