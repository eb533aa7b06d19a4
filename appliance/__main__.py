"""``python -m appliance`` runs the same command line as ``appliance``."""

from appliance.cli.main import main

main()
