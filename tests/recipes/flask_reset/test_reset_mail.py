import pytest
from reset_app import create_app


@pytest.fixture
def app(mailsink):
    # flask_settings has MAIL_SUPPRESS_SEND = False: with TESTING on, Flask-Mail would send nothing.
    return create_app({"TESTING": True, **mailsink.flask_settings})


def test_password_reset_mails_a_link(app, mailsink):
    response = app.test_client().post("/password-reset", data={"email": "ann@example.test"})

    assert response.status_code == 202
    (mail,) = mailsink.assert_sent(to="ann@example.test", subject="Reset your password")
    assert "https://app.example.test/reset?for=ann@example.test" in mail.text
