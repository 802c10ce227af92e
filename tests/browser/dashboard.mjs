// The dashboard (GET / on the stat listener): against the real gateway, then against a stub
// /api/overview for what one local process cannot show (a cluster, a gateway that is not
// ready, many apps).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const DASHBOARD = fileURLToPath(new URL("../../crates/gateway-server/assets/dashboard.html", import.meta.url));
const SCREENSHOTS = process.env.SCREENSHOT_DIR || fileURLToPath(new URL("../../target/screenshots", import.meta.url));
const MEMBER = 123456;

/** `/stat`'s body as {app: count}. */
function parseStat(body) {
  return Object.fromEntries(body.split("\n").filter(Boolean).map((line) => {
    const at = line.lastIndexOf(" ");
    return [line.slice(0, at), Number(line.slice(at + 1))];
  }));
}

async function tileValue(page, id) {
  return Number(await page.locator(`#${id} .value`).getAttribute("data-value"));
}

export function dashboardTests(state) {
  test("dashboard: counts match the gateway, a burst of pushes shows in the rates and the chart", async () => {
    const { context, gateway } = state;
    const page = await context.newPage();
    state.dashboard = page;
    await page.goto(`http://${gateway.stat}/`);
    await page.locator('#conn-state[data-state="live"]').waitFor();

    // The demo page holds one connection, a member subscribed to im (see run.mjs): wait for
    // the dashboard to show what /stat and /api/overview say.
    const stat = parseStat((await gateway.fetchStat("/stat")).body);
    assert.deepEqual(stat, { im: 1 });
    await page.waitForFunction(
      (expected) => {
        const rows = [...document.querySelectorAll("#apps-list li")].map((li) => [li.dataset.app, Number(li.dataset.connections)]);
        return JSON.stringify(Object.fromEntries(rows)) === JSON.stringify(expected);
      },
      stat,
    );
    const overview = JSON.parse((await gateway.fetchStat("/api/overview")).body);
    assert.equal(await tileValue(page, "tile-connections"), overview.connections);
    assert.equal(overview.connections, 1);
    assert.equal(await tileValue(page, "tile-apps"), Object.keys(stat).length);
    await page.locator("#broker", { hasText: "local · connected" }).waitFor();
    await page.locator('#ready[data-state="ready"]').waitFor();

    // Push in batches until the dashboard shows a push rate above anything before the burst
    // (the demo tests pushed a few): a rate is the difference between two samples, so it shows
    // up one sampling interval or two after the pushes.
    const before = Number(await page.locator("#chart-pushes").getAttribute("data-max"));
    const deliveredBefore = Number(await page.locator("#chart-deliveries").getAttribute("data-max"));
    const deadline = Date.now() + 15_000;
    let pushed = 0;
    for (;;) {
      const statuses = await Promise.all(
        Array.from({ length: 25 }, (_, i) => gateway.push("im", MEMBER, `burst ${pushed + i}`)),
      );
      assert.ok(statuses.every((s) => s === 202), `pushes refused: ${statuses}`);
      pushed += statuses.length;
      const shown = await tileValue(page, "tile-push-rate");
      const peak = Number(await page.locator("#chart-pushes").getAttribute("data-max"));
      if (shown > before && peak > before) break;
      assert.ok(Date.now() < deadline, `no push rate on the dashboard after ${pushed} pushes`);
      await page.waitForTimeout(100);   // pacing the load, not synchronising: the loop waits for the tile
    }
    assert.ok(Number(await page.locator("#chart-deliveries").getAttribute("data-max")) > deliveredBefore);
    assert.ok(await tileValue(page, "tile-delivery-rate") > 0);
    assert.equal(await page.locator("#apps-list li").count(), 1);
    await page.screenshot({ path: join(SCREENSHOTS, "dashboard.png"), fullPage: true });
  });

  test("dashboard: says disconnected and keeps retrying when the gateway goes away", async () => {
    const page = state.dashboard;
    await state.gateway.stop();
    await page.locator('#conn-state[data-state="disconnected"]').waitFor();
    assert.equal(await page.locator("#ready").textContent(), "health unknown");
    assert.equal(await page.locator("#health").textContent(), "unknown");
    // The last numbers stay on screen, dimmed.
    assert.ok(await tileValue(page, "tile-push-rate") >= 0);
    await page.screenshot({ path: join(SCREENSHOTS, "dashboard-disconnected.png"), fullPage: true });
  });

  test("dashboard: a cluster that is not ready, with many apps and closes (stub /api/overview)", async () => {
    const server = await stubServer(clusterOverview());
    try {
      // It starts unreachable (503), then comes up: the page keeps asking and goes live.
      server.down = true;
      const page = await state.context.newPage();
      await page.goto(`http://127.0.0.1:${server.address().port}/`);
      await page.locator('#conn-state[data-state="disconnected"]').waitFor();
      server.down = false;
      await page.locator('#conn-state[data-state="live"]').waitFor();
      await page.locator('#ready[data-state="not-ready"]').waitFor();
      assert.equal(await page.locator("#not-ready li").first().textContent(), "broker disconnected: connection refused");
      assert.equal(await page.locator("#nodes tr").count(), 3);
      assert.equal(await page.locator("#apps-list li").count(), 20);
      assert.equal(await page.locator("#apps-shown").textContent(), "top 20 of 57");
      // App names are data, never markup.
      assert.equal(await page.locator('#apps-list li[data-app="<b>x</b>"] .name').textContent(), "<b>x</b>");
      assert.equal(await page.locator('#closes tr[data-code="4100"] td').nth(1).textContent(), "slow consumer: queue full");
      assert.equal(await tileValue(page, "tile-uptime"), 200_000);
      await page.screenshot({ path: join(SCREENSHOTS, "dashboard-cluster.png"), fullPage: true });
      await page.close();
    } finally {
      server.close();
    }
  });
}

function stubServer(overview) {
  const html = readFileSync(DASHBOARD);
  const server = createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(html);
    } else if (req.url === "/api/overview" && server.down) {
      res.writeHead(503, { "Retry-After": "1" }).end("shutting down");
    } else if (req.url === "/api/overview") {
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(overview));
    } else {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/** Ten minutes of a busy three-node cluster whose broker has just gone away. */
function clusterOverview() {
  const now = Date.now();
  const samples = [];
  let pushes = 0, deliveries = 0;
  for (let i = 0; i < 300; i++) {
    const rate = 40 + 30 * Math.sin(i / 25) + (i > 250 ? 60 : 0);
    pushes += Math.round(rate * 2);
    deliveries += Math.round(rate * 2 * 180);
    samples.push({ t: now - (299 - i) * 2000, connections: 4000 + Math.round(800 * Math.sin(i / 60)), pushes, deliveries });
  }
  const top = Array.from({ length: 20 }, (_, i) => ({ app: i === 7 ? "<b>x</b>" : `app-${String(i).padStart(2, "0")}`, connections: Math.round(2400 / (i + 1)) }))
    .sort((a, b) => b.connections - a.connections);
  return {
    node_id: "gw-1:5000", version: "0.1.0", uptime_s: 200_000, ready: false,
    not_ready: ["broker disconnected: connection refused"],
    broker: { kind: "redis", state: "connecting" },
    connections: samples[299].connections, handshakes: 3,
    apps: { total: 57, top },
    totals: { connections_opened: 91234, pushes_accepted: pushes, pushes_refused: 12, deliveries, slow_consumer_closes: 4, auth_refused: 31 },
    closes: { 1000: 80211, 1001: 20, 1006: 301, 4100: 4, 4101: 77, 4408: 2 },
    series: { interval_s: 2, samples },
    nodes: [
      { node_id: "gw-1:5000", connections: samples[299].connections, self: true },
      { node_id: "gw-2:5000", connections: 3980 },
      { node_id: "gw-3:5000", connections: 4102 },
    ],
  };
}
