from django.core.management.base import BaseCommand

from commcare_connect.demo.story import run


class Command(BaseCommand):
    help = "Seed the over-cap incident and walk through it step by step."

    def handle(self, *args, **options):
        run(self.stdout)
