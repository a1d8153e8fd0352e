"""A client secret file rotated the way Kubernetes does it, under load: no call fails."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from deployments._kubelet import SecretVolume
from plainid_async import ConfigurationError, TokenProvider
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from pathlib import Path

OLD = "old-client-secret-0123456789"
NEW = "new-client-secret-9876543210"
#: Token lifetime (seconds): the refresh window opens after half of it.
LIFETIME = 8.0


async def run_through_rotation(
    provider: TokenProvider, fake: FakePlainID, volume: SecretVolume, *, update_at: float
) -> tuple[int, int]:
    """Call steadily for two lifetimes; PlainID rotates at 0.5 s, the volume at ``update_at``.

    Returns:
        The calls that got a token the fake accepts, and those that did not.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    good = bad = 0
    rotated = updated = False
    while (now := loop.time() - start) < 2 * LIFETIME:
        if now >= 0.5 and not rotated:
            fake.rotate_secret(fake.client_id, NEW)  # the old secret is dead at once
            rotated = True
        if now >= update_at and not updated:
            volume.update(NEW)
            updated = True
        try:
            token = await provider.get_token()
        except Exception:  # noqa: BLE001 (a failed call is what is counted)
            bad += 1
        else:
            if fake.is_valid(token.access_token):
                good += 1
            else:
                bad += 1
        await asyncio.sleep(0.02)
    return good, bad


@pytest.mark.parametrize(
    "update_at",
    [1.0, LIFETIME * 0.6],
    ids=["volume-updated-before-the-refresh", "volume-updated-after-a-rejected-refresh"],
)
async def test_kubelet_secret_rotation_fails_no_call_when_the_new_secret_lands_in_time(
    tmp_path: Path, update_at: float
) -> None:
    volume = SecretVolume(tmp_path / "plainid-secret", OLD)
    async with FakePlainID(client_secret=OLD, expires_in=LIFETIME) as fake:
        async with TokenProvider(
            fake.client_id, client_secret_file=volume.path, base_url=str(fake.base_url)
        ) as provider:
            good, bad = await run_through_rotation(provider, fake, volume, update_at=update_at)
        statuses = [request.status for request in fake.token_requests]
    assert bad == 0
    assert good > 100
    # The first token with the old secret, the rejected refresh(es), then the new secret.
    assert statuses[0] == 200
    assert 401 in statuses
    assert statuses[-1] == 200
    assert statuses.count(401) <= 2
    assert len(statuses) <= 6


async def test_from_env_re_reads_plainid_client_secret_file_after_a_rejection(
    tmp_path: Path,
) -> None:
    volume = SecretVolume(tmp_path / "plainid-secret", OLD)
    async with FakePlainID(client_secret=OLD) as fake:
        environ = {
            "PLAINID_CLIENT_ID": fake.client_id,
            "PLAINID_CLIENT_SECRET_FILE": str(volume.path),
            "PLAINID_BASE_URL": str(fake.base_url),
        }
        async with TokenProvider.from_env(environ) as provider:
            await provider.get_token()
            fake.rotate_secret(fake.client_id, NEW)
            volume.update(NEW)
            token = await provider.get_token(force_refresh=True)
        assert fake.is_valid(token.access_token)
        assert [r.status for r in fake.token_requests] == [200, 401, 200]


def test_exactly_one_of_client_secret_and_client_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(OLD + "\n")
    with pytest.raises(ConfigurationError, match="exactly one of client_secret and client_sec"):
        TokenProvider("client", "a-secret", client_secret_file=path, region="us1")
    with pytest.raises(ConfigurationError, match="exactly one of client_secret and client_sec"):
        TokenProvider("client", region="us1")
    with pytest.raises(ConfigurationError, match="client_secret_file must be a file path"):
        TokenProvider("client", client_secret_file=3, region="us1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot read client_secret_file"):
        TokenProvider("client", client_secret_file=tmp_path / "missing", region="us1")
    provider = TokenProvider("client", client_secret_file=path, region="us1")
    assert OLD not in repr(provider)
