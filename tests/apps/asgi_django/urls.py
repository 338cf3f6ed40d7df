from django.urls import path

from . import views

urlpatterns = [
    path("hello/", views.hello, name="hello"),
    path("items/<int:n>/", views.item, name="item"),
]
