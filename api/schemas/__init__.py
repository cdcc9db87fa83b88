"""Request and response models of the HTTP API (pydantic; no database, no FastAPI routing)."""
