"""No credentials in the repository, settings documented in `.env.example`, loopback by default.

The least-privilege IAM policy is checked in `test_infra.py`.
"""

from __future__ import annotations

import inspect
import re
import subprocess

import yaml
from conftest import REPO_ROOT

from deathmetal_lake.local_aws import server
from deathmetal_lake.settings import LakeSettings, _EnvironmentSettings

ENV_EXAMPLE = REPO_ROOT / ".env.example"
# An AWS access key id, or a secret key given a literal value anywhere.
CREDENTIAL = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|(?i:aws_secret_access_key|aws_session_token)\s*[=:]\s*['\"]?(?!test\b)[A-Za-z0-9/+]{20,}"
)


def _tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in listed.decode().split("\0") if name]


def _variable(name: str) -> str:
    field = _EnvironmentSettings.model_fields[name]
    alias = field.validation_alias
    return alias.choices[0] if alias is not None else f"LAKE_{name.upper()}"


def test_no_credentials_in_the_repository() -> None:
    found = []
    for name in _tracked_files():
        path = REPO_ROOT / name
        if not path.is_file() or path.suffix in (".png", ".parquet"):
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}: {match.group(0)[:12]}…" for match in CREDENTIAL.finditer(text)]
    assert found == []


def test_credential_pattern_catches_a_key() -> None:
    # AWS's documentation examples, put together here so that this file does not match itself.
    key_id, secret = "AKIA" + "IOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert CREDENTIAL.search(f"aws_access_key_id = {key_id}")
    assert CREDENTIAL.search(f'aws_secret_access_key="{secret}"')
    assert not CREDENTIAL.search('"aws_secret_access_key": "test"')


def test_dot_env_is_ignored_and_only_the_example_is_tracked() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False
    ).returncode
    assert ignored == 0, ".env is not git-ignored"
    assert ".env" not in _tracked_files()
    assert ".env.example" in _tracked_files()


def test_env_example_documents_every_setting_and_sets_none() -> None:
    text = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^# ([A-Z_]+)=", text, flags=re.MULTILINE))
    assert documented == {_variable(name) for name in LakeSettings.model_fields}
    assert re.findall(r"^[A-Z_]+=", text, flags=re.MULTILINE) == [], "a value is set, not shown"
    assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text


def test_ui_and_emulators_listen_on_loopback_by_default() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^\t\$\(BIN\)/dagster dev -h 127\.0\.0\.1 ", makefile, flags=re.MULTILINE)
    assert inspect.signature(server.serve).parameters["host"].default == "127.0.0.1"
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    ports = [port for service in compose["services"].values() for port in service["ports"]]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports)
