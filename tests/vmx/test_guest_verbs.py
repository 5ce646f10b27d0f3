"""`vmtools-sim guest …` against `twistd vmtools` as real processes over a real Unix socket."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import REPO, SIM, simulated_guest, wait_for
from twisted_vmtools.vmx.conformance_vix import remove_account

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def open_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A guest that accepts any login (--auth none) and acts as the user running the tests."""
    with simulated_guest(tmp_path_factory.mktemp("open"), "--auth", "none") as path:
        yield path


@pytest.fixture(scope="module")
def pam_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A guest checking logins through PAM (the default)."""
    with simulated_guest(tmp_path_factory.mktemp("pam")) as path:
        yield path


def guest(socket: Path, *args: str, login: str = "anyone:anything") -> subprocess.CompletedProcess[str]:
    verb, *rest = args
    return subprocess.run([*SIM, "guest", verb, "--socket", str(socket), "-l", login, *rest],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_run_prints_output_and_exits_with_the_programs_code(open_guest: Path) -> None:
    done = guest(open_guest, "run", "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    bare = guest(open_guest, "run", "echo", "a b", "c")  # a bare name goes through the shell
    assert (bare.returncode, bare.stdout) == (0, "a b c\n")


def test_file_verbs(open_guest: Path, tmp_path: Path) -> None:
    base = tmp_path / "work"
    assert guest(open_guest, "mkdir", str(base / "x" / "y")).returncode == 1
    assert guest(open_guest, "mkdir", "-p", str(base / "x" / "y")).returncode == 0
    temp = guest(open_guest, "mktemp", "-p", str(base), "-t", "t-").stdout.strip()
    assert Path(temp).is_file() and Path(temp).parent == base
    tempdir = guest(open_guest, "mktemp", "-d", "-p", str(base)).stdout.strip()
    assert Path(tempdir).is_dir()
    listing = guest(open_guest, "ls", "-s", str(base)).stdout.split()
    assert sorted(listing) == sorted([".", "..", "x", Path(temp).name, Path(tempdir).name])
    assert guest(open_guest, "chmod", "0640", temp).returncode == 0
    assert Path(temp).stat().st_mode & 0o777 == 0o640
    assert guest(open_guest, "touch", "-d", "2001-02-03T04:05:06Z", temp).returncode == 0
    assert Path(temp).stat().st_mtime == 981173106
    assert guest(open_guest, "touch", str(base / "new")).returncode == 0 and (base / "new").is_file()
    other = base / "other"
    other.write_text("keep")
    refused = guest(open_guest, "mv", "-n", temp, str(other))
    assert refused.returncode == 1 and "FileAlreadyExists" in refused.stderr and other.read_text() == "keep"
    assert guest(open_guest, "mv", temp, str(other)).returncode == 0 and other.read_text() == ""
    assert guest(open_guest, "mv", tempdir, str(base / "moved")).returncode == 0 and (base / "moved").is_dir()
    assert "NotAFile" in guest(open_guest, "rm", str(base / "moved")).stderr
    assert guest(open_guest, "rm", str(other)).returncode == 0 and not other.exists()
    assert "DirectoryNotEmpty" in guest(open_guest, "rmdir", str(base)).stderr
    assert guest(open_guest, "rmdir", "-r", str(base)).returncode == 0 and not base.exists()


def test_process_verbs(open_guest: Path) -> None:
    pid = int(guest(open_guest, "start", "/bin/sleep", "60").stdout)
    ps = guest(open_guest, "ps", "-p", str(pid)).stdout.splitlines()
    assert len(ps) == 2 and str(pid) in ps[1] and '"/bin/sleep" 60' in ps[1] and ps[1].split()[3] == "-"
    assert guest(open_guest, "kill", "-p", str(pid)).returncode == 0

    def ended() -> bool:
        return guest(open_guest, "ps", "-p", str(pid)).stdout.splitlines()[1].split()[3] != "-"

    wait_for(ended, "the killed program to end")
    assert "GuestProcessNotFound" in guest(open_guest, "kill", str(pid)).stderr
    every = guest(open_guest, "ps", "-e").stdout
    assert len(every.splitlines()) > 3  # the guest's other processes too
    env = guest(open_guest, "getenv", "HOME", "USER").stdout.split()
    me = pwd.getpwuid(os.geteuid())
    assert env == [f"HOME={me.pw_dir}", f"USER={me.pw_name}"]


def test_listing_5000_entries_over_the_socket(open_guest: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(5000):
        (big / f"entry-{i:05d}").touch()
    names = guest(open_guest, "ls", "-s", str(big)).stdout.split()
    assert names == [".", ".."] + [f"entry-{i:05d}" for i in range(5000)]


def test_malformed_requests_get_vix_errors_and_the_guest_goes_on(open_guest: Path, tmp_path: Path) -> None:
    for command, reply in [('Vix_1_Relayed_Command "x"', "OK 10000 0 "),
                           ("Vix_1_Relayed_Command", "OK 10000 0 ")]:
        done = subprocess.run([*SIM, "tclo", "--socket", str(open_guest), command], capture_output=True,
                              timeout=60, cwd=REPO)
        assert done.stdout.rstrip(b"\n").rstrip(b"\0").decode() == reply
    assert guest(open_guest, "mkdir", str(tmp_path / "after")).returncode == 0 and (tmp_path / "after").is_dir()


def test_no_login_is_refused_before_anything(open_guest: Path) -> None:
    done = subprocess.run([*SIM, "guest", "mkdir", "--socket", str(open_guest), "/tmp/never"],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "VMTOOLS_SIM_GUEST_LOGIN"})
    assert done.returncode != 0 and "VMTOOLS_SIM_GUEST_LOGIN" in done.stderr


def test_a_wrong_password_runs_nothing(pam_guest: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = guest(pam_guest, "run", "/bin/touch", str(marker), login="root:not-the-password")
    assert done.returncode == 1 and "InvalidGuestLogin" in done.stderr
    assert not marker.exists()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory any account can reach (pytest's tmp_path sits under a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="vix-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def account(shared: Path) -> Iterator[tuple[str, str]]:
    """A real unprivileged account with a password, removed afterwards (needs root)."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("creating a test account needs root and useradd")
    name = "vixt" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    home = shared / name
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield name, password
    finally:
        remove_account(name)


def test_an_unprivileged_account(pam_guest: Path, account: tuple[str, str], shared: Path) -> None:
    name, password = account
    login = f"{name}:{password}"
    entry = pwd.getpwnam(name)
    ran = guest(pam_guest, "run", "/bin/sh", "-c", "id -u; id -g; pwd; echo $HOME", login=login)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(entry.pw_uid), str(entry.pw_gid), entry.pw_dir, entry.pw_dir]
    hidden = shared / "root-only-dir" / "inside"
    hidden.mkdir(parents=True)
    hidden.parent.chmod(0o700)
    refused_cwd = guest(pam_guest, "run", "-C", str(hidden), "/bin/ls", login=login)
    assert refused_cwd.returncode == 1 and "CannotAccessFile" in refused_cwd.stderr
    protected = shared / "root-only"
    protected.mkdir(mode=0o755)
    victim = protected / "file"
    victim.write_text("untouched")
    refused = guest(pam_guest, "rm", str(victim), login=login)
    assert refused.returncode == 1 and "CannotAccessFile" in refused.stderr
    assert victim.read_text() == "untouched"
    made = guest(pam_guest, "mktemp", "-p", entry.pw_dir, login=login)
    assert made.returncode == 0, made.stderr
    assert Path(made.stdout.strip()).stat().st_uid == entry.pw_uid  # file operations act as the account
    assert "CannotAccessFile" in guest(pam_guest, "chmod", "0777", str(victim), login=login).stderr
    assert victim.stat().st_mode & 0o777 != 0o777


def test_transfers_act_as_the_account(pam_guest: Path, account: tuple[str, str], shared: Path,
                                      tmp_path: Path) -> None:
    """guest upload/download with an unprivileged login: the HGFS packets are performed as that account."""
    name, password = account
    login = f"{name}:{password}"
    entry = pwd.getpwnam(name)
    source = tmp_path / "source"
    source.write_bytes(os.urandom(600_000))
    mine = Path(entry.pw_dir) / "uploaded"
    uploaded = guest(pam_guest, "upload", str(source), str(mine), login=login)
    assert uploaded.returncode == 0, uploaded.stderr
    assert mine.read_bytes() == source.read_bytes() and mine.stat().st_uid == entry.pw_uid  # the account's file
    back = tmp_path / "back"
    assert guest(pam_guest, "download", str(mine), str(back), login=login).returncode == 0
    assert back.read_bytes() == source.read_bytes()
    secret = shared / "secret"
    secret.write_bytes(b"root's")
    secret.chmod(0o600)
    protected = shared / "protected"
    protected.mkdir(mode=0o755)
    for verb, args in [("download", (str(secret), str(tmp_path / "stolen"))),
                       ("upload", (str(source), str(protected / "planted"))),
                       ("upload", ("-f", str(source), str(secret)))]:
        refused = guest(pam_guest, verb, *args, login=login)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"permission denied for {name}" in refused.stderr
    assert secret.read_bytes() == b"root's" and not (protected / "planted").exists()
    assert not (tmp_path / "stolen").exists()
    exists = guest(pam_guest, "upload", str(source), str(mine), login=login)
    assert exists.returncode == 1 and "exists in the guest (-f to overwrite)" in exists.stderr
    directory = guest(pam_guest, "upload", str(source), str(shared), login=login)
    assert directory.returncode == 1 and "is not a file in the guest" in directory.stderr
    bad = guest(pam_guest, "download", str(mine), str(tmp_path / "x"), login=f"{name}:wrong")
    assert bad.returncode == 1 and "refused the login" in bad.stderr and bad.stderr.count("\n") == 1
