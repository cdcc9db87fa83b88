"""The privtune command line and the embedded stack."""
