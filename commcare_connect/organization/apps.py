from django.apps import AppConfig


class OrganizationConfig(AppConfig):
    name = "commcare_connect.organization"
    label = "organization"
