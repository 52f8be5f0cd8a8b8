def test_signup_sends_the_welcome_mail(client, mailsink):
    response = client.post("/signup/", {"email": "ann@example.test"})

    assert response.status_code == 201
    (mail,) = mailsink.assert_sent(to="ann@example.test", subject="Welcome", count=1)
    assert mail.mail_from == "app@example.test"
    assert "Thanks for signing up" in mail.text
