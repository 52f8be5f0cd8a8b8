"""README's "In your tests" recipes, each run as its user runs it, against a real server.

The recipes live as files under tests/recipes/ (Python: a stand-in app and the test a user
pastes) and tests/interop/recipes/ (Node); README shows the same text, which the tests at the
end check. The Python ones run in a pytest of their own (pytester, in-process) with the `mailsink`
plugin loaded as any project's pytest loads it, and their real stack: pytest-django's `settings`
with Django's SMTP backend, Flask-Mail, FastAPI's BackgroundTasks under TestClient. The unittest
one runs under `python -m unittest`, the Node ones under node, the CI snippets' shell lines under
bash against a real `mailsink serve`, their `pip install "$MAILSINK_PIP"` included: a real pip
install of a copy of this checkout into a new venv, whose `mailsink` the later lines run. Not
run: Cypress (no browser here) and docker-compose (no registry for the image); their files are
only checked (the compose file's command line by mailsink's own parser).

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
import sysconfig
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
    _need("fastapi")
    if importlib.util.find_spec("httpx2") is None:  # Starlette's TestClient takes either
        _need("httpx")
    _copy_recipe(pytester, "fastapi_welcome")
    # What the recipe's comment says: the task has run when `client.post` returns.
    pytester.makepyfile(
        test_the_task_ran_before_post_returned="""
        from test_welcome_mail import client


        def test_the_mail_is_there_when_post_returns(client, mailsink):
            assert client.post("/signup", params={"email": "ann@example.test"}).status_code == 202
            assert [m.rcpt_to for m in mailsink.messages] == [["ann@example.test"]]
        """
    )
    # No warning from the recipe's code. Starlette 1.x warns, on importing its TestClient, when
    # it finds httpx and not httpx2: the environment's doing, not the recipe's. (Its
    # StarletteDeprecationWarning is a UserWarning.)
    result = pytester.runpytest_inprocess(
        *("-W", "error::DeprecationWarning", "-W", "error::UserWarning"),
        *("-W", "ignore:Using `httpx` with `starlette.testclient`:UserWarning"),
    )
    result.assert_outcomes(passed=2)


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


def test_node_recipe_says_why_when_the_envelope_is_not_there(tmp_path: Path) -> None:
    """The recipe's own wait fails with the server's words, not a TypeError on the 408's
    object: here the audit address is refused at RCPT, so no message has it in its envelope."""
    _node_ready()
    with RunningSink(tmp_path / "mail.db") as sink:
        rule = {
            "stage": "rcpt",
            "reply": "550 5.1.1 No such user",
            "match": {"recipient": "audit@*"},
        }
        assert _http("POST", f"{sink.url}/api/mailsink/faults", rule)[0] == 201
        result = _node(sink, "--test", "--test-name-pattern=signup", "recipes/signup.test.mjs")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^# fail 1$", result.stdout, re.MULTILINE), result.stdout
    assert (
        "waiting for the mail to audit@example.test: timed out after 2s: 0 of 1 matching"
        " messages" in result.stdout
    ), result.stdout


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


# What stands in for the app's test run: it sends the mail the next step waits for, trying
# again on a 4xx reply as an app should (the GitHub recipe's fault rule fails the first one).
APP_SENDS = textwrap.dedent(
    """\
    python - <<'EOF'
    import smtplib
    for attempt in range(3):
        try:
            with smtplib.SMTP("127.0.0.1", 1025, timeout=10) as client:
                message = b"From: app@example.test\\r\\nSubject: Welcome\\r\\n\\r\\nHi Ann\\r\\n"
                client.sendmail("app@example.test", ["ann@example.test"], message)
            break
        except smtplib.SMTPResponseException as refused:
            if refused.smtp_code >= 500:
                raise
            print("the app tries again after", refused.smtp_code)
    EOF
    """
)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What a user has of mailsink: its source, as in a checkout (what `pip install .` reads).
    A copy: pip builds inside the source tree (build/, mailsink.egg-info), which must not be
    this work tree, read by other tests at the same time."""
    source = tmp_path / "mailsink-checkout"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "mailsink", source / "mailsink", ignore=shutil.ignore_patterns("__pycache__")
    )
    return source


@pytest.fixture
def runner_python(tmp_path: Path) -> Path:
    """The bin directory of a new venv with no mailsink in it: the runner's Python, into which
    the recipe's own `pip install "$MAILSINK_PIP"` installs mailsink for real (built from the
    checkout, with build isolation, its console script made). mailsink's dependencies are
    already there, linked from this test's venv, so that pip resolves them against mailsink's
    requirements ("Requirement already satisfied") instead of downloading 30 wheels: 4-5 s an
    install instead of ~22 s (a venv with pip of its own: 7 s more)."""
    venv = tmp_path / "runner-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    for package in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not package.name.startswith(("mailsink", "__editable__", "__pycache__")):
            (site / package.name).symlink_to(package)
    pip = venv / "bin" / "pip"  # pip's own console script, for the venv's Python
    pip.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\n"
        "from pip._internal.cli.main import main\nsys.exit(main())\n"
    )
    pip.chmod(0o755)
    return venv / "bin"


class Shell:
    """Runs scripts as a CI runner does, each in a process group of its own so that what they
    leave running in the background (`mailsink serve &`) can be stopped afterwards. PATH has the
    runner's Python first and not this test's venv: `mailsink` is what the recipe installed."""

    def __init__(self, env: dict[str, str], cwd: Path, python: Path) -> None:
        path = [entry for entry in os.environ["PATH"].split(os.pathsep) if Path(entry) != BIN]
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
            "PATH": os.pathsep.join([str(python), *path]),
            **env,
        }
        self.cwd = cwd
        self.groups: list[int] = []

    def run(self, script: str, *options: str) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            ["bash", *options, "-c", script],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.groups.append(process.pid)
        out, err = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):  # nothing of it left
                os.killpg(group, signal.SIGTERM)


@pytest.fixture
def shell(tmp_path: Path, runner_python: Path) -> Iterator[Shell]:
    runner = Shell(
        {"RUNNER_TEMP": str(tmp_path), "CI_PROJECT_DIR": str(tmp_path)}, tmp_path, runner_python
    )
    yield runner
    runner.stop()


def _ci_environment(shell: Shell, variables: dict[str, Any], checkout: Path) -> tuple[int, int]:
    """The recipe's variables given to `shell`, with free ports, and MAILSINK_PIP the checkout
    (the recipe's own value is a placeholder URL for the user's copy of mailsink)."""
    assert " @ git+https://" in variables["MAILSINK_PIP"]  # the form README explains
    smtp, http = free_port(), free_port()
    shell.env.update({k: _with_free_ports(str(v), smtp, http) for k, v in variables.items()})
    shell.env["MAILSINK_PIP"] = str(checkout)
    return smtp, http


def _installed_from(shell: Shell, checkout: Path) -> None:
    """The `mailsink` the steps ran is the one the recipe's pip line installed: the runner
    venv's console script, from a wheel pip built in `checkout` (its direct_url.json)."""
    runner_bin = Path(shell.env["PATH"].split(os.pathsep)[0])
    assert (runner_bin / "mailsink").is_file()
    (record,) = runner_bin.parent.glob("lib/python3*/site-packages/mailsink-*.dist-info")
    assert json.loads((record / "direct_url.json").read_text()) == {
        "url": checkout.as_uri(),
        "dir_info": {},
    }
    assert (checkout / "build").is_dir()  # built there, not in this work tree


def test_github_actions_steps_run_against_mailsink_serve(shell: Shell, checkout: Path) -> None:
    workflow = _yaml().safe_load((RECIPES / "ci" / "github-actions.yml").read_text())
    (job,) = workflow["jobs"].values()
    smtp, http = _ci_environment(shell, job["env"], checkout)
    steps = {step["name"].split(" (")[0]: step["run"] for step in job["steps"] if "run" in step}
    assert list(steps) == [
        "Start mailsink",
        "The first message fails with 451",
        "Tests",
        "The signup mail was sent",
        "The rules with their hits",
        "mailsink's log",
    ]
    assert steps["Start mailsink"].startswith('pip install "$MAILSINK_PIP"\n')
    steps["Tests"] = APP_SENDS
    outputs = {}
    for name, script in steps.items():
        # GitHub's default shell for `run:` on Linux: `bash -e {0}`.
        done = shell.run(_with_free_ports(script, smtp, http), "-e")
        assert done.returncode == 0, f"step {name!r}:\n{done.stdout}{done.stderr}"
        outputs[name] = done.stdout
        if name == "Start mailsink":
            _installed_from(shell, checkout)
            # Before the app has sent anything, the check fails the step, with one line.
            early = steps["The signup mail was sent"].replace("--timeout 30s", "--timeout 0")
            failed = shell.run(_with_free_ports(early, smtp, http), "-e")
            assert failed.returncode == 1 and failed.stdout == "", failed
            (line,) = failed.stderr.splitlines()
            assert "timed out" in line and "rcpt:ann@example.test" in line, line
    assert "Successfully installed mailsink-" in outputs["Start mailsink"]
    # The app met the rule's 451 once and tried again; the wait printed the mail as `mailsink
    # list` does; the listing shows the rule's one hit; the last step printed the server's log.
    assert outputs["Tests"] == "the app tries again after 451\n"
    assert "Welcome" in outputs["The signup mail was sent"]
    listing = outputs["The rules with their hits"].splitlines()
    (flaky,) = [re.split(r"\s{2,}", line) for line in listing if line.startswith("flaky  ")]
    assert flaky[1:5] == ["data", "451 4.3.0 Try again later, 1 time", "on", "1"], flaky
    assert f"HTTP API on http://127.0.0.1:{http}" in outputs["mailsink's log"]


def test_gitlab_ci_script_runs_against_mailsink_serve(shell: Shell, checkout: Path) -> None:
    pipeline = _yaml().safe_load((RECIPES / "ci" / "gitlab-ci.yml").read_text())
    job = pipeline["test"]
    smtp, http = _ci_environment(shell, job["variables"], checkout)
    # GitLab runs before_script and script in one shell, stopping at the first failure.
    lines = [*job["before_script"], *job["script"]]
    assert lines[0] == 'pip install "$MAILSINK_PIP"'
    assert lines[-2] == "pytest"
    lines[-2] = APP_SENDS
    done = shell.run(_with_free_ports("\n".join(lines), smtp, http), "-e", "-o", "pipefail")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully installed mailsink-" in done.stdout
    assert "Welcome" in done.stdout
    _installed_from(shell, checkout)


# ---- docker-compose: not run (no registry for the image here); what makes it work and safe,
# checked


def test_docker_compose_publishes_on_the_hosts_loopback_only() -> None:
    compose = _yaml().safe_load((RECIPES / "docker" / "docker-compose.yml").read_text())
    service = compose["services"]["mailsink"]
    assert service["image"] == "python:3.12-slim"
    assert sorted(service["ports"]) == ["127.0.0.1:1025:1025", "127.0.0.1:8025:8025"]
    assert set(service) == {"image", "command", "ports", "volumes"}  # no config file
    # The command line as the shell splits it and mailsink's own parser reads it.
    sh, dash_c, script = shlex.split(service["command"])
    assert (sh, dash_c) == ("sh", "-c")
    *install, serve = script.split(" && ")
    # mailsink from the checkout mounted read-only at /src, copied afresh (pip builds inside
    # the source tree): the same `pip install CHECKOUT` as the CI recipes run.
    assert install == [
        "rm -rf /tmp/mailsink",
        "cp -R /src /tmp/mailsink",
        "pip install /tmp/mailsink",
    ]
    source, store = service["volumes"]
    assert source == "${MAILSINK_SRC:?set MAILSINK_SRC to a mailsink checkout}:/src:ro"
    assert serve.startswith("exec ")
    program, command, *args = shlex.split(serve.removeprefix("exec "))
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
        http_allowed_hosts=given["http_allowed_hosts"],
    )
    # The other services' name for it is served (any other name is refused).
    assert settings.http.allowed_hosts == ("mailsink",)
    # Both listeners on every interface inside the container, on the ports `ports` publishes.
    assert (settings.smtp.host, settings.smtp.port) == ("0.0.0.0", 1025)
    assert (settings.http.enabled, settings.http.host, settings.http.port) == (
        True,
        "0.0.0.0",
        8025,
    )
    # The store in the named volume, so that it outlives the container.
    name, inside = store.split(":")
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
