"""The authenticator: argon2 off the event loop, cached for reconnect storms."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edge.testing import FakeClock
from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.errors import ConfigError, Unauthorized

PW = hash_password("pw-d1")


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    path = tmp_path / "creds.json"
    save_accounts(path, {"d1": Account("d1", "device", PW),
                         "ops": Account("ops", "operator", hash_password("pw-ops"))})
    return path


async def test_verify_then_cache(creds: Path) -> None:
    with Authenticator(creds, clock=FakeClock()) as auth:
        assert auth.check_cached("d1", b"pw-d1") is None
        account = await auth.authenticate("d1", b"pw-d1")
        assert (account.username, account.role) == ("d1", "device")
        assert auth.stats.verified == 1
        # a reconnect with the same password costs no argon2 run
        assert auth.check_cached("d1", b"pw-d1") == account
        assert await auth.authenticate("d1", b"pw-d1") == account
        assert auth.stats.verified == 1
        assert auth.stats.cache_hits == 2
        # another password is not served from the cache
        assert auth.check_cached("d1", b"other") is None


async def test_failures_have_reasons_and_are_cached_negatively(creds: Path) -> None:
    clock = FakeClock()
    with Authenticator(creds, clock=clock, negative_ttl_s=60) as auth:
        with pytest.raises(Unauthorized) as err:
            await auth.authenticate("d1", b"wrong")
        assert err.value.reason == "bad_password"
        with pytest.raises(Unauthorized):
            await auth.authenticate("d1", b"wrong")
        assert auth.stats.negative_hits == 1
        with pytest.raises(Unauthorized) as err:
            await auth.authenticate("nobody", b"x")
        assert err.value.reason == "unknown_user"
        assert auth.stats.failures == {"bad_password": 2, "unknown_user": 1}
        clock.advance(61)  # after the ttl, a wrong password is verified again
        with pytest.raises(Unauthorized):
            await auth.authenticate("d1", b"wrong")
        assert auth.stats.negative_hits == 1


async def test_file_change_invalidates_the_cache(creds: Path) -> None:
    clock = FakeClock()
    with Authenticator(creds, clock=clock, reload_check_s=2.0) as auth:
        await auth.authenticate("d1", b"pw-d1")
        save_accounts(creds, {"d1": Account("d1", "device", hash_password("new-pw"))})
        os.utime(creds, ns=(1, 1))  # a distinct mtime even on coarse filesystems
        assert auth.check_cached("d1", b"pw-d1") is not None  # not re-checked yet
        clock.advance(2.0)
        assert auth.check_cached("d1", b"pw-d1") is None
        with pytest.raises(Unauthorized):
            await auth.authenticate("d1", b"pw-d1")
        assert (await auth.authenticate("d1", b"new-pw")).username == "d1"
        save_accounts(creds, {})
        os.utime(creds, ns=(2, 2))
        clock.advance(2.0)
        assert auth.check_cached("d1", b"new-pw") is None
        assert auth.account("d1") is None


def test_broken_file_keeps_last_good_accounts(creds: Path) -> None:
    clock = FakeClock()
    with Authenticator(creds, clock=clock) as auth:
        creds.write_text("{broken")
        clock.advance(5)
        assert auth.account("d1") is not None
        assert auth.stats.reload_errors == 1


def test_broken_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[]")
    with pytest.raises(ConfigError):
        Authenticator(path)


async def test_verification_does_not_block_the_loop(creds: Path) -> None:
    """While argon2 runs (~0.1 s), the event loop keeps ticking."""
    with Authenticator(creds, clock=FakeClock()) as auth:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        await auth.authenticate("ops", b"pw-ops")
        task.cancel()
        assert ticks >= 3
