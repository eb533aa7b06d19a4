"""``python -m appliance`` runs the same command line as ``appliance``."""

from appliance.cli.main import main

# Guarded: spawned worker processes (prompt rendering) re-import the main module.
if __name__ == "__main__":
    main()
