from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "commcare_connect.users"
    label = "users"
