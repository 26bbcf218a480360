from django.urls import path

from . import views

urlpatterns = [
    path("documents", views.submit_document),
    path("healthz", views.healthz),
]
