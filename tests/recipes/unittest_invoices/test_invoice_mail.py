import unittest

from invoices import InvoiceMailer

from mailsink.testing import MailsinkTestCase


class InvoiceMailTest(MailsinkTestCase):
    def test_invoice_goes_to_the_customer_and_to_accounts(self):
        InvoiceMailer(**self.mailsink.smtp_settings).send("ann@example.test", 42, b"%PDF-1.7")

        (mail,) = self.mailsink.assert_sent(
            to=["ann@example.test", "accounts@example.test"], subject="Invoice 42"
        )
        self.assertEqual(mail.header("To"), "ann@example.test")  # accounts: envelope only
        self.assertEqual([a.filename for a in mail.attachments], ["invoice-42.pdf"])


if __name__ == "__main__":
    unittest.main()
