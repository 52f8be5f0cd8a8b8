import pytest
from fastapi.testclient import TestClient
from welcome_api import app, smtp_settings


@pytest.fixture
def client(mailsink):
    app.dependency_overrides[smtp_settings] = lambda: mailsink.smtp_settings
    with TestClient(app) as client:
        yield client
    app.dependency_overrides.clear()


def test_signup_mails_from_a_background_task(client, mailsink):
    response = client.post("/signup", params={"email": "ann@example.test"})

    assert response.status_code == 202
    # TestClient runs background tasks before `client.post` returns, so the mail is there now;
    # against a live server or a real task queue it comes later: wait_for serves both.
    (mail,) = mailsink.wait_for(rcpt="ann@example.test", subject="Welcome", timeout=5)
    assert mail.rcpt_to == ["ann@example.test"]
    assert mail.text.strip() == "Thanks for signing up."
