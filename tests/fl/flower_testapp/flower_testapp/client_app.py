"""The test ClientApp: known updates, faults from the run config."""

from tests.fl.flower_apps import make_client_app

app = make_client_app()
