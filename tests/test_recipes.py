"""README's "In your tests" recipes, each run as its user runs it, against a real server.

The recipes live as files under tests/recipes/ (Python: a stand-in app and the test a user
pastes) and tests/interop/recipes/ (Node); README shows the same text, which the tests at the
end check. The Python ones run in a pytest of their own (pytester, in-process) with the `mailsink`
plugin loaded as any project's pytest loads it, and their real stack: pytest-django's `settings`
with Django's SMTP backend, Flask-Mail, FastAPI's BackgroundTasks under TestClient. The unittest
one runs under `python -m unittest`, the Node ones under node, the CI snippets' shell lines under
bash against a real `mailsink serve`. Not run: Cypress (no browser here) and docker-compose (no
registry for the image); their files are only checked (the compose file's command line by
mailsink's own parser).

A stack that is not installed is a skip with the reason; with MAILSINK_INTEROP=required (set by
.ci/run) it is a failure, so that CI cannot pass without running the recipes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port

from mailsink.cli import cli
from mailsink.config import Settings
from mailsink.testing import RunningSink

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
RECIPES = TESTS / "recipes"
INTEROP = TESTS / "interop"
REQUIRED = os.environ.get("MAILSINK_INTEROP") == "required"
# Where the CLI's console script is (the venv running this test).
BIN = Path(sys.executable).parent


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"recipes: {reason} (MAILSINK_INTEROP=required)")
    pytest.skip(f"recipes: {reason}")


def _need(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed")


@pytest.fixture(autouse=True)
def outer_environment() -> Iterator[None]:
    """os.environ as it was: the inner runs' plugins write to it (pytest-django sets
    DJANGO_SETTINGS_MODULE from the ini), which would then leak into the next inner run."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _copy_recipe(pytester: pytest.Pytester, name: str, *, leave_out: tuple[str, ...] = ()) -> None:
    shutil.copytree(
        RECIPES / name,
        pytester.path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", *leave_out),
    )


# ---- Python: a pytest of the recipe's own, as its user runs it


def test_django_recipe_sends_through_the_smtp_backend(pytester: pytest.Pytester) -> None:
    _need("django", "pytest_django")
    _copy_recipe(pytester, "django_signup")
    # What the recipe's README text says to configure for pytest-django.
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = signup_site.settings\npythonpath = .\n")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)


def test_django_recipe_without_the_settings_override_finds_no_mail(
    pytester: pytest.Pytester,
) -> None:
    """The override is what sends the mail to mailsink: without it pytest-django's locmem
    backend keeps it, and the recipe's assert_sent fails saying nothing arrived."""
    _need("django", "pytest_django")
    _copy_recipe(pytester, "django_signup", leave_out=("conftest.py",))
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = signup_site.settings\npythonpath = .\n")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError*", "*(nothing arrived)*"])


def test_flask_recipe_sends_with_flask_mail(pytester: pytest.Pytester) -> None:
    _need("flask", "flask_mail")
    _copy_recipe(pytester, "flask_reset")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)


def test_fastapi_recipe_waits_for_the_background_task(pytester: pytest.Pytester) -> None:
    _need("fastapi", "httpx")
    _copy_recipe(pytester, "fastapi_welcome")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)


def test_retry_recipe_retries_on_451_and_counts_the_hits(pytester: pytest.Pytester) -> None:
    _copy_recipe(pytester, "retries", leave_out=("test_flaky_config.py",))
    result = pytester.runpytest_inprocess("--strict-markers")
    result.assert_outcomes(passed=2)


def test_retry_recipe_against_the_flaky_sample_config(pytester: pytest.Pytester) -> None:
    _copy_recipe(pytester, "retries", leave_out=("test_receipt_retries.py",))
    flaky = ROOT / "sample_configs" / "flaky.toml"
    result = pytester.runpytest_inprocess("--mailsink-config", str(flaky))
    result.assert_outcomes(passed=1)


def test_unittest_recipe_runs_under_python_m_unittest(tmp_path: Path) -> None:
    shutil.copytree(RECIPES / "unittest_invoices", tmp_path, dirs_exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "unittest", "-v", "test_invoice_mail"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # unittest reports on stderr; one test, passed.
    assert re.search(r"^Ran 1 test in .*\n\nOK$", result.stderr, re.MULTILINE), result.stderr


# ---- Node: nodemailer, the unmodified mailpit-api client, playwright-core's request


def _node_ready() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("no node")
    from test_http_interop import _installed

    _installed()  # `npm ci` from the lock file (test_http_interop's own skip or failure)


def _node(sink: RunningSink, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILSINK_URL": sink.url, "SMTP_PORT": str(sink.port)}
    return subprocess.run(
        ["node", *args], cwd=INTEROP, env=env, capture_output=True, text=True, timeout=60
    )


def test_node_recipe_with_nodemailer_and_mailpit_api(tmp_path: Path) -> None:
    _node_ready()
    with RunningSink(tmp_path / "mail.db") as sink:
        result = _node(sink, "--test", "recipes/signup.test.mjs")
        with sink.reader() as reader:
            stored = reader.list_messages()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# pass 2$", result.stdout, re.MULTILINE), result.stdout
    # The second test's message was refused at RCPT: only the first one is there.
    assert [m.headers["subject"] for m in stored] == ["Confirm your address"]


def test_playwright_recipe_with_playwright_core_request(tmp_path: Path) -> None:
    _node_ready()
    with RunningSink(tmp_path / "mail.db") as sink:
        result = _node(sink, "recipes/playwright-recipe.mjs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "playwright recipe: all checks passed" in result.stdout


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")  # as cy.request sends an object
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_cypress_recipe_requests_are_served(tmp_path: Path) -> None:
    """Not run under Cypress (it needs its browser binary). The config's names are those
    cypress-mailpit 2.0.0 reads (`Cypress.expose("MAILPIT_URL")`; 1.x: `Cypress.env`), and the
    spec's commands are made here as its source makes them, against a real server: the search
    (`GET /api/v1/search?query=…&start=0&limit=50`), the latest message, its text at
    `//view/ID.txt` (the base URL joined with "/"), deleting all, and the fault rule's POST and
    DELETE of the spec's cy.request calls."""
    config = (INTEROP / "recipes" / "cypress.config.js").read_text()
    spec = (INTEROP / "recipes" / "signup.cy.js").read_text()
    (base,) = re.findall(r'expose: \{ MAILPIT_URL: "(http://[^"]+)" \}', config)
    (query,) = re.findall(r'cy\.mailpitHasEmailsBySearch\("([^"]+)"\)', spec)
    (rule_text,) = re.findall(r"const full = (\{.*?\});", spec, re.S)
    rule = json.loads(re.sub(r"(\w+):", r'"\1":', rule_text))  # the JS object literal as JSON
    (rule_url,) = re.findall(r"url: `\$\{api\}(/faults/[^`]+)`", spec)
    assert "cy.mailpitGetMail().mailpitGetMailTextBody()" in spec

    assert base == "http://127.0.0.1:8025"  # mailsink's default; the test's server is elsewhere
    with RunningSink(tmp_path / "mail.db") as sink:
        url = sink.url
        assert _http("DELETE", f"{url}/api/v1/messages")[0] == 200
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.sendmail(
                "app@example.test",
                ["ann@example.test"],
                b"From: app@example.test\r\nTo: ann@example.test\r\n"
                b"Subject: Confirm your address\r\n\r\nhttps://app.example.test/confirm/abc\r\n",
            )
        search = urllib.parse.urlencode({"query": query, "start": 0, "limit": 50})
        status, body = _http("GET", f"{url}/api/v1/search?{search}")
        assert status == 200 and json.loads(body)["messages_count"] == 1, body
        status, body = _http("GET", f"{url}/api/v1/message/latest")
        latest = json.loads(body)
        status, text = _http("GET", f"{url}//view/{latest['ID']}.txt")
        assert status == 200 and b"/confirm/" in text, text

        assert _http("POST", f"{url}/api/mailsink/faults", rule)[0] == 201
        with (
            smtplib.SMTP(sink.host, sink.port, timeout=10) as client,
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        ):
            client.sendmail("app@example.test", ["ann@example.test"], b"Subject: x\r\n\r\nx")
        assert refused.value.recipients["ann@example.test"][0] == 452
        assert _http("DELETE", f"{url}/api/mailsink{rule_url}")[0] == 200
        # afterEach's DELETE when the test left no rule: a 404, which it tells Cypress to allow.
        assert _http("DELETE", f"{url}/api/mailsink{rule_url}")[0] == 404


# ---- CI: the snippets' shell lines under bash, against a real `mailsink serve`


def _yaml() -> Any:
    _need("yaml")
    import yaml

    return yaml


def _with_free_ports(text: str, smtp: int, http: int) -> str:
    """The snippet's commands with the default ports swapped for free ones (tests run many
    servers at once, and 1025/8025 may be a developer's own mailsink)."""
    return re.sub(r"\b1025\b", str(smtp), re.sub(r"\b8025\b", str(http), text))


# What stands in for `pip install mailsink`: the mailsink under test is already installed.
PIP_INSTALLED = 'pip() { echo "pip $*: mailsink is installed from the work tree"; }\n'
# What stands in for the app's test run: it sends the mail the next step waits for.
APP_SENDS = textwrap.dedent(
    """\
    python - <<'EOF'
    import smtplib
    with smtplib.SMTP("127.0.0.1", 1025, timeout=10) as client:
        client.sendmail("app@example.test", ["ann@example.test"],
                        b"From: app@example.test\\r\\nSubject: Welcome\\r\\n\\r\\nHi Ann\\r\\n")
    EOF
    """
)


class Shell:
    """Runs scripts as a CI runner does, each in a process group of its own so that what they
    leave running in the background (`mailsink serve &`) can be stopped afterwards."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
        self.cwd = cwd
        self.groups: list[int] = []

    def run(self, script: str, *options: str) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            ["bash", *options, "-c", PIP_INSTALLED + script],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.groups.append(process.pid)
        out, err = process.communicate(timeout=60)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):  # nothing of it left
                os.killpg(group, signal.SIGTERM)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    runner = Shell({"RUNNER_TEMP": str(tmp_path), "CI_PROJECT_DIR": str(tmp_path)}, tmp_path)
    yield runner
    runner.stop()


def _github_job(shell: Shell) -> tuple[dict, int, int]:
    """The workflow's job, its env given to `shell` with free ports."""
    workflow = _yaml().safe_load((RECIPES / "ci" / "github-actions.yml").read_text())
    (job,) = workflow["jobs"].values()
    smtp, http = free_port(), free_port()
    shell.env.update({k: _with_free_ports(str(v), smtp, http) for k, v in job["env"].items()})
    return job, smtp, http


def test_github_actions_steps_run_against_mailsink_serve(shell: Shell) -> None:
    job, smtp, http = _github_job(shell)
    steps = {step["name"].split(" (")[0]: step["run"] for step in job["steps"] if "run" in step}
    assert list(steps) == ["Start mailsink", "Tests", "The signup mail was sent", "mailsink's log"]
    steps["Tests"] = APP_SENDS
    outputs = {}
    for name, script in steps.items():
        # GitHub's default shell for `run:` on Linux: `bash -e {0}`.
        done = shell.run(_with_free_ports(script, smtp, http), "-e")
        assert done.returncode == 0, f"step {name!r}:\n{done.stdout}{done.stderr}"
        outputs[name] = done.stdout
        if name == "Start mailsink":
            # Before the app has sent anything, the check fails the step, with one line.
            early = steps["The signup mail was sent"].replace("--timeout 30s", "--timeout 0")
            failed = shell.run(_with_free_ports(early, smtp, http), "-e")
            assert failed.returncode == 1 and failed.stdout == "", failed
            (line,) = failed.stderr.splitlines()
            assert "timed out" in line and "rcpt:ann@example.test" in line, line
    # The wait printed the mail as `mailsink list` does; the last step printed the server's log.
    assert "Welcome" in outputs["The signup mail was sent"]
    assert f"HTTP API on http://127.0.0.1:{http}" in outputs["mailsink's log"]


def test_gitlab_ci_script_runs_against_mailsink_serve(shell: Shell, tmp_path: Path) -> None:
    pipeline = _yaml().safe_load((RECIPES / "ci" / "gitlab-ci.yml").read_text())
    job = pipeline["test"]
    smtp, http = free_port(), free_port()
    shell.env.update({k: _with_free_ports(str(v), smtp, http) for k, v in job["variables"].items()})
    # GitLab runs before_script and script in one shell, stopping at the first failure.
    lines = [*job["before_script"], *job["script"]]
    assert lines[-2] == "pytest"
    lines[-2] = APP_SENDS
    done = shell.run(_with_free_ports("\n".join(lines), smtp, http), "-e", "-o", "pipefail")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Welcome" in done.stdout


# ---- docker-compose: not run (no registry for the image here); what makes it safe, checked


def test_docker_compose_publishes_on_the_hosts_loopback_only() -> None:
    compose = _yaml().safe_load((RECIPES / "docker" / "docker-compose.yml").read_text())
    service = compose["services"]["mailsink"]
    assert service["image"] == "python:3.12-slim"
    assert sorted(service["ports"]) == ["127.0.0.1:1025:1025", "127.0.0.1:8025:8025"]
    assert set(service) == {"image", "command", "ports", "volumes"}  # no config file
    # The command line as the shell splits it and mailsink's own parser reads it.
    sh, dash_c, script = shlex.split(service["command"])
    assert (sh, dash_c) == ("sh", "-c")
    install, serve = script.split(" && exec ")
    assert install == "pip install mailsink"
    program, command, *args = shlex.split(serve)
    assert (program, command) == ("mailsink", "serve")
    with cli.commands["serve"].make_context("serve", args) as context:
        given = context.params
    assert given["config"] is None
    settings = Settings().with_overrides(
        host=given["host"],
        port=given["port"],
        db=given["db"],
        http_port=given["http_port"],
        http_host=given["http_host"],
    )
    # Both listeners on every interface inside the container, on the ports `ports` publishes.
    assert (settings.smtp.host, settings.smtp.port) == ("0.0.0.0", 1025)
    assert (settings.http.enabled, settings.http.host, settings.http.port) == (
        True,
        "0.0.0.0",
        8025,
    )
    # The store in the named volume, so that it outlives the container.
    (volume,) = service["volumes"]
    name, inside = volume.split(":")
    assert name in compose["volumes"]
    assert settings.storage.path.startswith(inside + "/")


# ---- README shows these files verbatim. These fail until README has the recipes (the lead
# pastes /work/notes/readme16_h5.md); afterwards, when a recipe file changes without README.

# Every recipe file README shows, as a fenced block of exactly the file's text.
SHOWN_IN_README = {
    "recipes/django_signup/conftest.py": "python",
    "recipes/django_signup/test_signup.py": "python",
    "recipes/flask_reset/test_reset_mail.py": "python",
    "recipes/fastapi_welcome/test_welcome_mail.py": "python",
    "recipes/retries/test_receipt_retries.py": "python",
    "recipes/unittest_invoices/test_invoice_mail.py": "python",
    "recipes/ci/github-actions.yml": "yaml",
    "recipes/ci/gitlab-ci.yml": "yaml",
    "recipes/docker/docker-compose.yml": "yaml",
    "interop/recipes/signup.test.mjs": "js",
    "interop/recipes/wait-for-mail.mjs": "js",
    "interop/recipes/cypress.config.js": "js",
    "interop/recipes/signup.cy.js": "js",
}
# The recipe files README does not show: the stand-in apps the shown tests run, and the runners.
NOT_SHOWN = {
    "recipes/__init__.py",
    "recipes/conftest.py",
    "recipes/django_signup/signup_site/__init__.py",
    "recipes/django_signup/signup_site/settings.py",
    "recipes/django_signup/signup_site/urls.py",
    "recipes/flask_reset/reset_app.py",
    "recipes/fastapi_welcome/welcome_api.py",
    "recipes/retries/receipts.py",
    "recipes/retries/test_flaky_config.py",
    "recipes/unittest_invoices/invoices.py",
    "interop/recipes/playwright-recipe.mjs",
}


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, text) of every ``` block, the text with its final newline."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", markdown, re.S | re.M)


def test_readme_shows_the_recipe_files_verbatim() -> None:
    """README's recipe blocks are these files: edit the file, then paste it into README."""
    blocks = fenced_blocks((ROOT / "README.md").read_text())
    missing = [
        f"tests/{name}"
        for name, language in SHOWN_IN_README.items()
        if (language, (TESTS / name).read_text()) not in blocks
    ]
    assert not missing, "README has no block equal to " + ", ".join(missing)


def test_every_recipe_file_is_shown_or_run_by_one_that_is() -> None:
    """A recipe file added is either shown in README or listed as one it runs, so that none
    goes unchecked."""
    files = {
        path.relative_to(TESTS).as_posix()
        for folder in (TESTS / "recipes", TESTS / "interop" / "recipes")
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert files == set(SHOWN_IN_README) | NOT_SHOWN
