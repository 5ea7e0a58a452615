from django.core.management.base import BaseCommand

from commcare_connect.demo.incident import build_incident


class Command(BaseCommand):
    help = "Create the over-cap incident data (new rows on every run) through the form processor."

    def handle(self, *args, **options):
        data = build_incident(self.stdout)
        self.stdout.write("Opportunity UUIDs: " + " ".join(str(u) for u in data.opportunity_uuids))
