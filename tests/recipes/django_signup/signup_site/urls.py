from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.urls import path


def signup(request: HttpRequest) -> HttpResponse:
    send_mail("Welcome", "Thanks for signing up.", None, [request.POST["email"]])
    return HttpResponse(status=201)


urlpatterns = [path("signup/", signup)]
