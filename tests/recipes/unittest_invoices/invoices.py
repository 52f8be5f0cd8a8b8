"""Mails invoices, with a copy to accounts on the envelope only: the stand-in for your code."""

import smtplib
from email.message import EmailMessage


class InvoiceMailer:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def send(self, address: str, number: int, pdf: bytes) -> None:
        message = EmailMessage()
        message["From"] = "billing@example.test"
        message["To"] = address
        message["Subject"] = f"Invoice {number}"
        message.set_content(f"Invoice {number} is attached.")
        message.add_attachment(
            pdf, maintype="application", subtype="pdf", filename=f"invoice-{number}.pdf"
        )
        with smtplib.SMTP(self.host, self.port, timeout=10) as client:
            client.send_message(message, to_addrs=[address, "accounts@example.test"])
