// ws-gateway.js when the gateway goes away: killed and restarted on the same port (the client
// reconnects and resubscribes by itself), frozen (the client's ping times out), and the backoff.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";

import { loadClient, nextEvent, startGateway, within } from "./helpers.mjs";

// Short, so that the tests are quick; the defaults are in DEFAULTS.
const FAST = { initialDelayMs: 50, maxDelayMs: 400, factor: 2, jitter: 0.5, stableAfterMs: 60_000 };
let cleanup = [];

afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

async function setUp(options) {
  const gateway = await startGateway();
  cleanup.push(() => gateway.stop());
  const { GatewayClient } = await loadClient(gateway);
  const client = new GatewayClient(`ws://${gateway.main}/`, { reconnect: FAST, ...options });
  cleanup.push(() => client.close());
  await within(client.connect(), "connect");
  return { gateway, client };
}

/** Resolves once the gateway has answered this subscribe (on whichever connection). */
const subscribed = (client, app) =>
  nextEvent(client, "reply", (reply) => reply.message === `subscribe ${app} success`);

test("killed and restarted on the same port: the client reconnects and resubscribes by itself", async () => {
  let { gateway, client } = await setUp();
  await client.subscribe("match");
  await client.subscribe("chat");
  await client.unsubscribe("chat");

  const lost = nextEvent(client, "close");
  await gateway.kill();
  const { code, reconnectInMs } = await lost;
  assert.equal(code, 1006);
  assert.ok(reconnectInMs !== null && reconnectInMs <= FAST.maxDelayMs, `reconnect in ${reconnectInMs} ms`);

  // Attempts fail while nothing listens: the delays grow (50 ms doubling) up to the cap, each
  // less a random part of up to half.
  const delays = [];
  for (let i = 0; i < 5; i++) {
    delays.push((await nextEvent(client, "close")).reconnectInMs);
  }
  assert.ok(delays.every((ms) => ms > 0 && ms <= FAST.maxDelayMs), `delays ${delays}`);
  assert.ok(delays.at(-1) >= FAST.maxDelayMs * (1 - FAST.jitter), `delays ${delays}`);

  const reopened = nextEvent(client, "open");
  const resubscribed = subscribed(client, "match");
  gateway = await gateway.restart();
  cleanup.push(() => gateway.stop());
  assert.deepEqual(await reopened, { memberId: null, code: 200, message: "hello stranger" });
  await resubscribed;
  assert.deepEqual(client.subscriptions, ["match"]);

  const pushes = client.pushes();
  assert.equal(await gateway.push("chat", -1, "unsubscribed before the restart"), 202);
  assert.equal(await gateway.push("match", -1, "after the restart"), 202);
  assert.deepEqual((await within(pushes.next(), "a push")).value, { app: "match", memberId: -1, text: "after the restart" });
  await pushes.return();
});

test("the backoff starts over once a connection has stayed up stableAfterMs", async () => {
  const stableAfterMs = 300;
  let { gateway, client } = await setUp({ reconnect: { ...FAST, stableAfterMs }, pingIntervalMs: 50 });
  let lost = nextEvent(client, "close");
  await gateway.kill();
  await lost;
  for (let i = 0; i < 3; i++) await nextEvent(client, "close");   // attempts 2 to 4: 400 ms at most

  const reopened = nextEvent(client, "open");
  gateway = await gateway.restart();
  cleanup.push(() => gateway.stop());
  await reopened;
  const openedAt = Date.now();
  // Pongs mark the time passing on a healthy connection, past stableAfterMs.
  while (Date.now() - openedAt <= stableAfterMs) {
    await nextEvent(client, "reply", (reply) => reply.message === "pong");
  }
  lost = nextEvent(client, "close");
  await gateway.kill();
  const { reconnectInMs } = await lost;
  assert.ok(reconnectInMs <= FAST.initialDelayMs, `first delay ${reconnectInMs} ms after a stable connection`);
});

test("a subscribe asked for while disconnected is answered on the next connection", async () => {
  let { gateway, client } = await setUp();
  const lost = nextEvent(client, "close");
  await gateway.kill();
  await lost;
  const answered = client.subscribe("later");
  assert.equal(client.state, "reconnecting");
  gateway = await gateway.restart();
  cleanup.push(() => gateway.stop());
  assert.deepEqual(await within(answered, "the subscribe"), { code: 200, message: "subscribe later success" });
});

test("a frozen gateway: the ping times out, the client drops the connection and comes back", async () => {
  const { gateway, client } = await setUp({ pingIntervalMs: 100, pingTimeoutMs: 1_000 });
  await client.subscribe("match");
  // Pings are answered while the gateway runs: a few intervals pass without a timeout.
  let timedOut = false;
  client.addEventListener("close", () => { timedOut = true; });
  for (let i = 0; i < 3; i++) await nextEvent(client, "reply", (reply) => reply.message === "pong");
  assert.equal(timedOut, false);

  const lost = nextEvent(client, "close");
  gateway.signal("SIGSTOP");
  cleanup.push(() => gateway.signal("SIGCONT"));
  const closed = await lost;
  assert.equal(closed.code, 1006);
  assert.equal(closed.reason, "ping timeout: no reply within 1000 ms");
  assert.ok(closed.reconnectInMs !== null);

  const reopened = nextEvent(client, "open", () => true, 15_000);
  const resubscribed = subscribed(client, "match");
  gateway.signal("SIGCONT");
  await reopened;
  await resubscribed;
  const pushes = client.pushes();
  assert.equal(await gateway.push("match", -1, "awake"), 202);
  assert.deepEqual((await within(pushes.next(), "a push")).value, { app: "match", memberId: -1, text: "awake" });
  await pushes.return();
});

test("reconnect: false, or close(): no reconnect", async () => {
  const { gateway, client } = await setUp({ reconnect: false });
  const lost = nextEvent(client, "close");
  await gateway.kill();
  assert.equal((await lost).reconnectInMs, null);
  assert.equal(client.state, "closed");

  const other = (await setUp()).client;
  const closed = nextEvent(other, "close");
  other.close();
  assert.deepEqual(await closed, { code: 1000, reason: "client closed", reconnectInMs: null });
  await assert.rejects(other.connect(), { code: 1000 });
});
