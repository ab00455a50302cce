"""The demo page's "all sessions" panel: a real Chromium follows a tenant stream of a real dev-mode gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.gateway_support import GatewayProcess, dev_mode_gateway
from tests.kafka_support import create_topic, unique_topic
from tests.test_browser import chromium_page, find_chromium

pytestmark = pytest.mark.timeout(180)


@pytest_asyncio.fixture
async def dev_gateway(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    topic = unique_topic("tenant-browser")
    await create_topic(kafka_bootstrap, topic, partitions=3, compacted=True)
    async with dev_mode_gateway(kafka_bootstrap, topic, tmp_path, GATEWAY_TENANT_STREAM_SCOPE="sessions:watch") as (
        _,
        gateway,
    ):
        yield gateway


def tenant_row(session: str, status: str) -> str:
    return (
        f"Array.from(document.querySelectorAll('#tenant-sessions tr')).some("
        f"r => r.dataset.id === {session} && r.dataset.status === '{status}')"
    )


async def test_all_sessions_panel_follows_the_tenant(dev_gateway: GatewayProcess, tmp_path: Path) -> None:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    async with chromium_page(find_chromium(), profile, tmp_path / "chromium.log") as page:
        await page.navigate(f"{dev_gateway.url}/demo")
        await page.evaluate("document.getElementById('tenant').value = 'panel-tenant'")
        await page.click("#create")
        first = "document.getElementById('session-id').dataset.first"
        await page.wait_for("document.getElementById('session-id').textContent.length === 36", what="a session")
        await page.evaluate(f"{first} = document.getElementById('session-id').textContent")
        await page.wait_for(tenant_row(first, "active"), what="the first session's row")
        await page.wait_for(
            "document.getElementById('tenant-state').textContent.startsWith('stream open')", what="the tenant stream"
        )
        await page.click('.status-btn[data-status="completed"]')
        await page.wait_for(tenant_row(first, "completed"), what="the first session completed in the panel")
        await page.click("#create")  # a second session of the same tenant: a second row, same stream
        second = "document.getElementById('session-id').textContent"
        await page.wait_for(f"{second} !== {first} && {second}.length === 36", what="a second session")
        await page.wait_for(tenant_row(second, "active"), what="the second session's row")
        assert await page.evaluate("document.querySelectorAll('#tenant-sessions tr').length") == 2
        assert (await page.evaluate("document.getElementById('tenant-state').textContent")).startswith("stream open")
        assert page.exceptions == [], page.exceptions
