"""The smallest Django project with a view that mails: the stand-in for your site."""

SECRET_KEY = "only-for-the-recipe"
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "signup_site.urls"
DEFAULT_FROM_EMAIL = "app@example.test"
USE_TZ = True
