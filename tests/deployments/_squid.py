"""squid on 127.0.0.1 with Basic proxy authentication (``basic_ncsa_auth``, htpasswd file)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from _programs import require_program

from deployments._harness import REQUIRE_ENV, free_port, listening, wait_for

#: Where Debian's squid keeps its helpers.
NCSA_AUTH = Path("/usr/lib/squid/basic_ncsa_auth")


class Squid:
    """One squid process (``-N``: in the foreground) that demands Basic credentials."""

    def __init__(self, login: str, password: str) -> None:
        self.binary = require_program("squid", package="squid", require_env=REQUIRE_ENV)
        self.htpasswd = require_program(
            "htpasswd", package="apache2-utils", require_env=REQUIRE_ENV
        )
        self.login = login
        self.password = password
        self.port = free_port()
        # squid drops to its own user: its files live in a directory that user can write.
        self.directory = Path(tempfile.mkdtemp(prefix="squid-"))
        self.directory.chmod(0o777)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        return f"http://{self.login}:{self.password}@127.0.0.1:{self.port}"

    @property
    def access_log(self) -> list[str]:
        """One line per request squid handled: ``STATUS METHOD URL USER``.

        The start-up probe's connection, closed before any request, is left out.
        """
        path = self.directory / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line for line in lines if not line.startswith("0 ")]

    def start(self) -> None:
        passwords = self.directory / "passwd"
        subprocess.run(  # noqa: S603 (a fixed binary, fixed arguments)
            [self.htpasswd, "-b", "-c", "-B", str(passwords), self.login, self.password],
            check=True,
            capture_output=True,
        )
        passwords.chmod(0o644)
        config = self.directory / "squid.conf"
        config.write_text(
            f"""
http_port 127.0.0.1:{self.port}
pid_filename {self.directory}/squid.pid
cache_log {self.directory}/cache.log
logformat plain %>Hs %rm %ru %un
access_log stdio:{self.directory}/access.log logformat=plain
coredump_dir {self.directory}
cache deny all
shutdown_lifetime 0 seconds
auth_param basic program {NCSA_AUTH} {passwords}
auth_param basic realm plainid-async tests
acl authenticated proxy_auth REQUIRED
http_access allow authenticated
http_access deny all
"""
        )
        if not NCSA_AUTH.exists():
            self.stop()
            raise RuntimeError(f"{NCSA_AUTH} is missing (apt-get install squid)")
        self.process = subprocess.Popen(  # noqa: S603 (a fixed binary, fixed arguments)
            [self.binary, "-N", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: listening(self.port), what=f"squid on port {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)
