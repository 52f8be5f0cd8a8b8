"""A FastAPI app that mails from a background task: the stand-in for yours."""

import smtplib
from email.message import EmailMessage
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI

app = FastAPI()


def smtp_settings() -> dict:
    return {"host": "127.0.0.1", "port": 1025}


def send_welcome(address: str, smtp: dict) -> None:
    message = EmailMessage()
    message["From"] = "app@example.test"
    message["To"] = address
    message["Subject"] = "Welcome"
    message.set_content("Thanks for signing up.")
    with smtplib.SMTP(**smtp, timeout=10) as client:
        client.send_message(message)


@app.post("/signup", status_code=202)
def signup(
    email: str, tasks: BackgroundTasks, smtp: Annotated[dict, Depends(smtp_settings)]
) -> dict:
    tasks.add_task(send_welcome, email, smtp)
    return {"queued": email}
