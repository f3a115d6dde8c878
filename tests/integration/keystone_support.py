"""A real Keystone for the identity tests: pip ``keystone`` under uWSGI, SQLite, fernet keys.

:func:`start_keystone` runs it from ``.venv-keystone`` (made by ``scripts/bootstrap.sh --test``;
its own venv, so Keystone's pins never meet imageport's) and fills it through its own API with
what the tests need (:class:`Keystone` lists it):

* projects ``alice-project`` and ``bob-project``; users ``alice-reader``, ``alice-member``,
  ``alice-admin`` (admin implies member implies reader, as ``keystone-manage bootstrap`` sets
  up) and ``bob-member``;
* the ``service`` project with the ``imageport`` service user, holding ``service`` and
  ``admin`` there and ``reader`` on the system (it reads the limits), as Glance's install guide
  gives its own user;
* the ``image`` service with one public endpoint (:meth:`Keystone.set_image_endpoint` points it
  at the ``imageport api`` under test, whose port is chosen when it starts);
* registered limits for Glance's four unified limits on that service, and a project limit of
  :data:`BOB_IMAGE_COUNT` images for ``bob-project``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from services_support import free_port

REPO = Path(__file__).resolve().parents[2]
#: Keystone's own venv (scripts/bootstrap.sh --test creates it).
KEYSTONE_VENV = Path(os.environ.get("IMAGEPORT_TEST_KEYSTONE_VENV", REPO / ".venv-keystone"))
START_TIMEOUT = 45.0  # seconds for uWSGI to answer /v3 (it imports all of Keystone first)
REGION = "RegionOne"
DOMAIN = "Default"
#: bob-project's project limit for image_count_total (the registered default is higher).
BOB_IMAGE_COUNT = 2
#: Registered (default) limits on the image service: MiB for the sizes, counts for the others.
REGISTERED_LIMITS = {
    "image_size_total": 10_000,
    "image_stage_total": 10_000,
    "image_count_total": 100,
    "image_count_uploading": 100,
}
#: Where the image endpoint points until an API server registers itself.
PLACEHOLDER_URL = "http://127.0.0.1:9"

#: A uWSGI request log line, e.g. ``GET /v3/auth/tokens?allow_expired=1 => generated``.
_REQUEST_LINE = re.compile(r"\b(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) => generated")


class KeystoneUnavailable(Exception):
    """Keystone's venv is missing (the fixture skips, or fails in CI)."""


@dataclass(frozen=True)
class User:
    """A user of the test Keystone, and the project it works in."""

    name: str
    password: str
    project_name: str
    user_id: str = ""
    project_id: str = ""


@dataclass
class Keystone:
    """A running Keystone and what the tests created in it."""

    url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    admin_password: str
    users: dict[str, User] = field(default_factory=dict)
    projects: dict[str, str] = field(default_factory=dict)  # name -> id
    image_service_id: str = ""
    image_endpoint_id: str = ""
    start_seconds: float = 0.0

    @property
    def auth_url(self) -> str:
        """The Identity v3 URL clients and imageport authenticate against."""
        return f"{self.url}/v3"

    @property
    def log_path(self) -> Path:
        """uWSGI's log: one line per request Keystone answered."""
        return self.workdir / "uwsgi.log"

    # Sessions and tokens

    def admin_session(self) -> ks_session.Session:
        """The bootstrap administrator, system scoped (creates projects, limits, endpoints)."""
        auth = v3.Password(
            auth_url=self.auth_url,
            username="admin",
            password=self.admin_password,
            user_domain_name=DOMAIN,
            system_scope="all",
        )
        return ks_session.Session(auth=auth)

    def session(self, user: str) -> ks_session.Session:
        """A password session of one of :attr:`users`, scoped to its project."""
        who = self.users[user]
        auth = v3.Password(
            auth_url=self.auth_url,
            username=who.name,
            password=who.password,
            user_domain_name=DOMAIN,
            project_name=who.project_name,
            project_domain_name=DOMAIN,
        )
        return ks_session.Session(auth=auth)

    def token(self, user: str) -> str:
        """A fresh project-scoped token of ``user``."""
        token = self.session(user).get_token()
        assert token
        return token

    def revoke(self, token: str) -> None:
        """Revoke a token (``DELETE /v3/auth/tokens``)."""
        response = self.admin_session().delete(
            f"{self.auth_url}/auth/tokens", headers={"X-Subject-Token": token}
        )
        assert response.status_code == 204, response.text

    def short_lived_token(self, user: str, seconds: float) -> str:
        """A token of ``user`` that expires in ``seconds``.

        Keystone caps a token at the expiry of the application credential it was issued for
        (CVE-2022-2447), so an application credential that expires soon gives a short-lived
        token without shortening every other token of the run.
        """
        who = self.users[user]
        sess = self.session(user)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        body = {
            "application_credential": {
                "name": f"short-{secrets.token_hex(4)}",
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%f"),
            }
        }
        created = sess.post(
            f"{self.auth_url}/users/{who.user_id}/application_credentials", json=body
        )
        cred = created.json()["application_credential"]
        auth = v3.ApplicationCredential(
            auth_url=self.auth_url,
            application_credential_id=cred["id"],
            application_credential_secret=cred["secret"],
        )
        token = ks_session.Session(auth=auth).get_token()
        assert token
        return token

    # The catalog

    def set_image_endpoint(self, url: str) -> None:
        """Point the ``image`` endpoint at an ``imageport api`` (catalog clients find it)."""
        response = self.admin_session().patch(
            f"{self.auth_url}/endpoints/{self.image_endpoint_id}", json={"endpoint": {"url": url}}
        )
        assert response.status_code == 200, response.text

    def api_settings(self, **extra: object) -> dict[str, object]:
        """Settings of an ``imageport api`` that validates tokens with this Keystone."""
        return {
            "auth_strategy": "keystone",
            "keystone_auth_url": self.auth_url,
            "keystone_username": "imageport",
            "keystone_password": self.users["imageport"].password,
            "keystone_project_name": "service",
            **extra,
        }

    # Observation

    def requests(self, path_prefix: str = "/v3/auth/tokens", method: str = "GET") -> int:
        """How many ``method`` requests under ``path_prefix`` Keystone has answered so far."""
        text = self.log_path.read_text(errors="replace")
        return sum(
            1
            for m in _REQUEST_LINE.finditer(text)
            if m.group(1) == method and m.group(2).startswith(path_prefix)
        )

    def stop(self) -> None:
        """Stop uWSGI and remove the working directory."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _write_config(workdir: Path) -> Path:
    (workdir / "fernet-keys").mkdir(mode=0o700)
    (workdir / "credential-keys").mkdir(mode=0o700)
    conf = workdir / "keystone.conf"
    conf.write_text(
        f"""[DEFAULT]
log_file = {workdir / "keystone.log"}
[database]
connection = sqlite:///{workdir / "keystone.db"}
[fernet_tokens]
key_repository = {workdir / "fernet-keys"}
[credential]
key_repository = {workdir / "credential-keys"}
[identity]
# The fewest bcrypt rounds Keystone accepts: a password check costs milliseconds, not 0.3 s.
password_hash_rounds = 4
[token]
expiration = 3600
[unified_limit]
enforcement_model = flat
"""
    )
    return conf


def _manage(conf: Path, *args: str) -> None:
    command = [str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(conf), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"keystone-manage {args[0]} failed: {done.stdout}{done.stderr}")


def _wait_ready(keystone: Keystone) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if keystone.process.poll() is not None:
            log = keystone.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"Keystone's uWSGI exited with {keystone.process.returncode}:\n{log}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(keystone.auth_url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Keystone did not answer {keystone.auth_url} in {START_TIMEOUT:.0f} s")


def start_keystone() -> Keystone:
    """Start Keystone and create the test projects, users, catalog and limits.

    Raises:
        KeystoneUnavailable: ``.venv-keystone`` is missing.
    """
    uwsgi = KEYSTONE_VENV / "bin" / "uwsgi"
    if not (KEYSTONE_VENV / "bin" / "keystone-manage").is_file() or not uwsgi.is_file():
        raise KeystoneUnavailable(
            f"{KEYSTONE_VENV} has no keystone-manage or uwsgi: run 'scripts/bootstrap.sh --test'"
        )
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="imageport-keystone-"))
    conf = _write_config(workdir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin_password = secrets.token_urlsafe(12)
    user = os.environ.get("USER") or subprocess.check_output(["id", "-un"], text=True).strip()
    group = subprocess.check_output(["id", "-gn"], text=True).strip()
    _manage(conf, "db_sync")
    _manage(conf, "fernet_setup", "--keystone-user", user, "--keystone-group", group)
    _manage(conf, "credential_setup", "--keystone-user", user, "--keystone-group", group)
    _manage(
        conf,
        "bootstrap",
        # One argument with "=": a generated password may start with "-", which argparse would
        # otherwise read as an option.
        f"--bootstrap-password={admin_password}",
        "--bootstrap-public-url",
        f"{url}/v3",
        "--bootstrap-region-id",
        REGION,
    )
    env = {**os.environ, "OS_KEYSTONE_CONFIG_DIR": str(workdir)}
    log = (workdir / "uwsgi.log").open("wb")
    process = subprocess.Popen(
        [
            str(uwsgi),
            "--http-socket",
            f"127.0.0.1:{port}",
            "--virtualenv",
            str(KEYSTONE_VENV),
            "--module",
            "keystone.wsgi.api:application",
            "--master",
            "--die-on-term",  # SIGTERM stops uWSGI (its default is to reload)
            "--need-app",
            "--processes",
            "2",
            "--threads",
            "2",
            # uWSGI's HTTP socket does not keep connections alive: tell clients, or their pooled
            # connections are reset under them.
            "--add-header",
            "Connection: close",
            "--logformat",  # one short line per request: what Keystone.requests() counts
            "%(method) %(uri) => generated %(status)",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    keystone = Keystone(url=url, workdir=workdir, process=process, admin_password=admin_password)
    try:
        _wait_ready(keystone)
        _populate(keystone)
    except BaseException:
        keystone.stop()
        raise
    keystone.start_seconds = time.monotonic() - began
    return keystone


#: Roles of each test user on its project (admin implies member implies reader in Keystone).
_USERS = {
    "alice-reader": ("alice-project", "reader"),
    "alice-member": ("alice-project", "member"),
    "alice-admin": ("alice-project", "admin"),
    "bob-member": ("bob-project", "member"),
    "imageport": ("service", "admin"),
}


def _populate(keystone: Keystone) -> None:
    admin = keystone.admin_session()
    api = keystone.auth_url

    def post(path: str, body: dict[str, object]) -> dict[str, object]:
        response = admin.post(f"{api}{path}", json=body)
        assert response.status_code == 201, f"POST {path}: {response.status_code} {response.text}"
        return response.json()  # type: ignore[no-any-return]

    def put(path: str) -> None:
        response = admin.put(f"{api}{path}")
        assert response.status_code in (201, 204), f"PUT {path}: {response.text}"

    roles = {r["name"]: r["id"] for r in admin.get(f"{api}/roles").json()["roles"]}
    if "service" not in roles:  # bootstrap creates it in recent releases only
        roles["service"] = post("/roles", {"role": {"name": "service"}})["role"]["id"]  # type: ignore[index]
    for project in ("alice-project", "bob-project", "service"):
        created = post("/projects", {"project": {"name": project, "domain_id": "default"}})
        keystone.projects[project] = created["project"]["id"]  # type: ignore[index]
    for name, (project, role) in _USERS.items():
        password = secrets.token_urlsafe(12)
        project_id = keystone.projects[project]
        body = {"name": name, "password": password, "domain_id": "default"}
        user_id = post("/users", {"user": body})["user"]["id"]  # type: ignore[index]
        put(f"/projects/{project_id}/users/{user_id}/roles/{roles[role]}")
        keystone.users[name] = User(name, password, project, user_id, project_id)
    service_user = keystone.users["imageport"].user_id
    put(f"/projects/{keystone.projects['service']}/users/{service_user}/roles/{roles['service']}")
    # System reader: oslo.limit reads every project's limits, which a project-scoped token
    # cannot (Keystone filters GET /v3/limits to the token's own project).
    put(f"/system/users/{service_user}/roles/{roles['reader']}")

    service = post("/services", {"service": {"type": "image", "name": "glance"}})
    keystone.image_service_id = service["service"]["id"]  # type: ignore[index]
    endpoint = {
        "service_id": keystone.image_service_id,
        "interface": "public",
        "url": PLACEHOLDER_URL,
        "region_id": REGION,
    }
    keystone.image_endpoint_id = post("/endpoints", {"endpoint": endpoint})["endpoint"]["id"]  # type: ignore[index]
    scope = {"service_id": keystone.image_service_id, "region_id": REGION}
    registered = [
        {**scope, "resource_name": name, "default_limit": value}
        for name, value in REGISTERED_LIMITS.items()
    ]
    post("/registered_limits", {"registered_limits": registered})
    bob = {
        **scope,
        "project_id": keystone.projects["bob-project"],
        "resource_name": "image_count_total",
        "resource_limit": BOB_IMAGE_COUNT,
    }
    post("/limits", {"limits": [bob]})
