from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo and scale data builders; no models, only commands and helpers."""

    name = "commcare_connect.demo"
    label = "demo"
