import smtplib

import pytest
from receipts import send_receipt


def test_receipt_survives_two_451s(mailsink):
    with mailsink.fault(stage="data", reply="451 4.3.0 Try again later", times=2) as flaky:
        attempts = send_receipt(1014, "ann@example.test", mailsink.smtp_settings)
        assert flaky.hits == 2

    assert attempts == 3
    assert [m.reply for m in mailsink.rejected] == ["451 4.3.0 Try again later"] * 2
    mailsink.assert_sent(to="ann@example.test", subject="Receipt for order 1014", count=1)


@pytest.mark.mailsink_faults(stage="data", reply="451 4.3.0 Try again later")
def test_receipt_gives_up_after_three_attempts(mailsink):
    with pytest.raises(smtplib.SMTPDataError) as failure:
        send_receipt(1015, "ann@example.test", mailsink.smtp_settings)

    assert failure.value.smtp_code == 451
    assert len(mailsink.rejected) == 3
    assert mailsink.messages == []
