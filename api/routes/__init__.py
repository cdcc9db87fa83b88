"""One router per resource: jobs, files, models, and the split-training endpoints (ours)."""
