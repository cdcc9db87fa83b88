"""API keys (``service.db.keys.create_api_key`` is what ``privtune keys create`` calls).

Re-exports :mod:`service.db.repo.keys`: keys are ``sk-pt-<prefix>-<secret>``, stored as a lookup prefix
plus the sha256 of the whole key, never in plaintext.
"""

from service.db.repo.keys import KEY_PREFIX, Principal, authenticate, create_api_key, hash_key, revoke_api_key

__all__ = ["KEY_PREFIX", "Principal", "authenticate", "create_api_key", "hash_key", "revoke_api_key"]
