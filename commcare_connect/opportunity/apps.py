from django.apps import AppConfig


class OpportunityConfig(AppConfig):
    name = "commcare_connect.opportunity"
    label = "opportunity"
