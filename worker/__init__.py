"""Celery GPU workers: the top model with LoRA, trained one step at a time from the device's requests."""
