"""Password hashing for MQTT accounts: argon2id, slow on purpose.

Parameters are the OWASP minimum for argon2id (19 MiB memory, 2 iterations, 1 lane): 19 MiB
and 0.09–0.17 s of CPU per verification on the development VM (more on a Pi).  The encoded
hash carries its own parameters, so a file written with other costs still verifies.

Slowness is what protects a stolen credentials file; it is also why
`gateway.auth.Authenticator` caches successful verifications for the process lifetime and
runs verifications in a bounded worker pool, never on the event loop.
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: OWASP Password Storage Cheat Sheet, argon2id minimum configuration
TIME_COST = 2
MEMORY_COST_KIB = 19 * 1024
PARALLELISM = 1

_HASHER = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB,
                         parallelism=PARALLELISM)

#: 24 URL-safe characters = 144 bits: far beyond brute force even with a fast hash
GENERATED_PASSWORD_BYTES = 18


def hash_password(password: str | bytes) -> str:
    """Return the encoded argon2id hash (`$argon2id$v=19$m=...`)."""
    return _HASHER.hash(password)


def verify_password(encoded: str, password: str | bytes) -> bool:
    """True if `password` matches `encoded`.  False for a mismatch or an unreadable hash."""
    try:
        return _HASHER.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """A random password for a sensor account (printed once by `devices add`)."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
