"""Mails a receipt, retrying temporary SMTP failures (4xx) with a backoff, as a Celery task with
`autoretry_for` and `retry_backoff` would: the stand-in for your task."""

import smtplib
import time
from email.message import EmailMessage


def send_receipt(order: int, address: str, smtp: dict, *, attempts: int = 3) -> int:
    """Sends it and answers how many attempts it took; a 5xx, or a 4xx on the last attempt, is
    raised."""
    message = EmailMessage()
    message["From"] = "shop@example.test"
    message["To"] = address
    message["Subject"] = f"Receipt for order {order}"
    message.set_content(f"Thank you for order {order}.")
    for attempt in range(1, attempts + 1):
        try:
            with smtplib.SMTP(**smtp, timeout=10) as client:
                client.send_message(message)
            return attempt
        except smtplib.SMTPResponseException as error:
            if error.smtp_code >= 500 or attempt == attempts:
                raise
            time.sleep(0.01 * 2**attempt)
