# pytest --mailsink-config sample_configs/flaky.toml: every test's server fails the first two
# messages with 451 (its rule "fail twice").
from receipts import send_receipt


def test_receipt_survives_the_flaky_server(mailsink):
    assert send_receipt(1016, "ann@example.test", mailsink.smtp_settings) == 3

    (rule,) = [rule for rule in mailsink.faults if rule.name == "fail twice"]
    assert rule.hits == 2
