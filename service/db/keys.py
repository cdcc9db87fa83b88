"""API keys (``service.db.keys`` is what ``privtune keys create / list / revoke`` call).

Re-exports :mod:`service.db.repo.keys`: keys are ``sk-pt-<prefix>-<secret>``, stored as a lookup prefix
plus the sha256 of the whole key, never in plaintext; listings show ``sk-pt-<prefix>-…`` only.
"""

from service.db.repo.keys import (
    KEY_PREFIX,
    LAST_USED_RESOLUTION_S,
    Principal,
    authenticate,
    create_api_key,
    hash_key,
    list_api_keys,
    redacted,
    revoke_api_key,
    revoke_api_key_by_id,
)

__all__ = [
    "KEY_PREFIX",
    "LAST_USED_RESOLUTION_S",
    "Principal",
    "authenticate",
    "create_api_key",
    "hash_key",
    "list_api_keys",
    "redacted",
    "revoke_api_key",
    "revoke_api_key_by_id",
]
