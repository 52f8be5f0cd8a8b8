"""A Flask app that mails a password-reset link with Flask-Mail: the stand-in for yours."""

from flask import Flask, request
from flask_mail import Mail, Message

mail = Mail()


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(MAIL_DEFAULT_SENDER="app@example.test", **(config or {}))
    mail.init_app(app)

    @app.post("/password-reset")
    def password_reset() -> tuple[str, int]:
        address = request.form["email"]
        link = f"https://app.example.test/reset?for={address}"
        mail.send(Message("Reset your password", recipients=[address], body=link))
        return "", 202

    return app
