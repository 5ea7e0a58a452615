from django.apps import AppConfig


class ProgramConfig(AppConfig):
    name = "commcare_connect.program"
    label = "program"
