from django.core.management.base import BaseCommand, CommandError

from commcare_connect.demo.synthetic import seed_synthetic


class Command(BaseCommand):
    help = (
        "Bulk-load deterministic scale data (opportunities, workers, works, visits, payments) "
        "with COPY; about 5% of the workers are over their cap."
    )

    def add_arguments(self, parser):
        parser.add_argument("--visits", type=int, required=True, help="exact number of visits")
        parser.add_argument(
            "--seed", type=int, default=1, help="random seed (same seed, same data)"
        )
        parser.add_argument(
            "--opportunities",
            type=int,
            default=None,
            help="number of opportunities (default: visits / 5000, at least 2)",
        )
        parser.add_argument(
            "--chunk-visits", type=int, default=50_000, help="visits per COPY transaction"
        )

    def handle(self, *args, **options):
        if options["visits"] < 1:
            raise CommandError("--visits must be positive")
        result = seed_synthetic(
            options["visits"],
            options["seed"],
            opportunities=options["opportunities"],
            stdout=self.stdout,
            chunk_visits=options["chunk_visits"],
        )
        self.stdout.write(
            f"Seed {result.seed}: {result.opportunities} opportunities, {result.accesses} "
            f"accesses ({result.over_cap_accesses} over their cap), {result.works} completed "
            f"works, {result.visits} visits."
        )
        ids = result.opportunity_ids
        self.stdout.write(f"Opportunity ids {ids[0]}..{ids[-1]}")
        self.stdout.write(
            "Rows: " + ", ".join(f"{key}={count}" for key, count in sorted(result.rows.items()))
        )
        self.stdout.write(
            "Timing: " + ", ".join(f"{key} {sec:.1f}s" for key, sec in result.seconds.items())
        )
