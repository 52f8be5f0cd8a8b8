import pytest


@pytest.fixture(autouse=True)
def email_to_mailsink(settings, mailsink):
    # pytest-django's `settings` fixture puts every setting back after the test.
    for name, value in mailsink.django_settings.items():
        setattr(settings, name, value)
