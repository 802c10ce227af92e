// ws-gateway.js against the real binary: authentication, subscribe and unsubscribe with the
// gateway's exact replies, pushes, other verbs' refusals, the backend's /disconnect, and pushes
// to an app named like the gateway's replies.
// Run by tests/js_client.rs (so by ./test.sh), or by hand after `cargo build`:
//   node --experimental-websocket --test tests/js/

import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import {
  MAX_SUBSCRIPTIONS, MEMBER, OTHER_MEMBER, TOKEN, loadClient, nextEvent, startGateway, within,
} from "./helpers.mjs";

let gateway;
let GatewayClient;
let GatewayError;
const clients = [];

before(async () => {
  gateway = await startGateway();
  ({ GatewayClient, GatewayError } = await loadClient(gateway));
});

after(async () => {
  for (const client of clients) client.close();
  await gateway?.stop();
  if (process.exitCode) console.error("gateway log:\n" + (gateway?.log.join("\n") ?? ""));
});

/** A connected client; closed after the tests. */
async function connected(options = {}) {
  const client = new GatewayClient(`ws://${gateway.main}/`, options);
  clients.push(client);
  const opened = await within(client.connect(), "connect");
  return { client, opened };
}

/** Pushes `text` to `app` and returns the status (202 expected). */
async function push(app, text, memberId = -1) {
  return gateway.push(app, memberId, text);
}

test("a member authenticates, anonymous is a stranger, a refused token continues as anonymous", async () => {
  const member = await connected({ memberId: MEMBER, token: TOKEN });
  assert.deepEqual(member.opened, { memberId: MEMBER, code: 200, message: `hello ${MEMBER}` });
  assert.equal(member.client.memberId, MEMBER);
  assert.equal(member.client.state, "open");

  const anonymous = await connected();
  assert.deepEqual(anonymous.opened, { memberId: null, code: 200, message: "hello stranger" });

  // A token function is called for the connection (tokens that expire are fetched fresh).
  const refused = await connected({ memberId: MEMBER, token: async () => "wrong" });
  assert.deepEqual(refused.opened, { memberId: null, code: 401, message: "unauthorized" });
  assert.equal(refused.client.state, "open");
  assert.throws(() => new GatewayClient(`ws://${gateway.main}/`, { memberId: 1.5 }), TypeError);
});

test("subscribe resolves with the gateway's reply and a push arrives with its exact text", async () => {
  const { client } = await connected();
  assert.deepEqual(await client.subscribe("match"), { code: 200, message: "subscribe match success" });
  assert.deepEqual(client.subscriptions, ["match"]);

  const text = `{"score":"2–1","quote":"\\"ok\\"","emoji":"⚽"}`;
  const pushes = client.pushes();
  const event = nextEvent(client, "push");
  assert.equal(await push("match", text), 202);
  assert.deepEqual(await event, { app: "match", memberId: -1, text });
  assert.deepEqual((await within(pushes.next(), "the iterator")).value, { app: "match", memberId: -1, text });
  await pushes.return();
});

test("a private app: forbidden to anonymous, a member receives only its own pushes", async () => {
  const anonymous = (await connected()).client;
  await assert.rejects(anonymous.subscribe("im"), (error) => {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.code, 403);
    assert.equal(error.reason, "subscribe im forbidden");
    return true;
  });
  // Refused: not resubscribed after a reconnect.
  assert.deepEqual(anonymous.subscriptions, []);

  const { client } = await connected({ memberId: MEMBER, token: TOKEN });
  await client.subscribe("im");
  const pushes = client.pushes();
  assert.equal(await push("im", "not for you", OTHER_MEMBER), 202);
  assert.equal(await push("im", "for you", MEMBER), 202);
  // Frames keep the gateway's order: the first push to arrive would be the other member's.
  assert.deepEqual((await within(pushes.next(), "a push")).value, { app: "im", memberId: MEMBER, text: "for you" });
  await pushes.return();
});

test("unsubscribe: the gateway's reply, then no more pushes for that app; twice is 404", async () => {
  const { client } = await connected();
  await client.subscribe("news");
  await client.subscribe("sport");
  assert.deepEqual(await client.unsubscribe("news"), { code: 200, message: "unsubscribe news success" });
  assert.deepEqual(client.subscriptions, ["sport"]);

  const pushes = client.pushes();
  assert.equal(await push("news", "after the unsubscribe"), 202);
  assert.equal(await push("sport", "the marker"), 202);
  // The news push was accepted first: had it been delivered, it would come first.
  assert.deepEqual((await within(pushes.next(), "a push")).value, { app: "sport", memberId: -1, text: "the marker" });
  await pushes.return();

  await assert.rejects(client.unsubscribe("news"), { name: "GatewayError", code: 404, reason: "unsubscribe news not subscribed" });
  // The connection stays usable.
  assert.deepEqual(await client.subscribe("news"), { code: 200, message: "subscribe news success" });
});

test("an unknown action and a bad message are answered 400; too many subscriptions 429", async () => {
  const { client } = await connected();
  await assert.rejects(client.request({ app: "chat", action: "history" }), { code: 400, reason: "unknown action" });
  await assert.rejects(client.request({ app: "chat", action: 7 }), { code: 400, reason: "bad subscribe message" });
  await assert.rejects(client.request({ app: "" }), { code: 400, reason: "bad subscribe message" });
  assert.throws(() => client.subscribe(""), TypeError);

  const apps = Array.from({ length: MAX_SUBSCRIPTIONS + 1 }, (_, i) => `app${i}`);
  const results = await Promise.allSettled(apps.map((app) => client.subscribe(app)));
  assert.deepEqual(results.slice(0, -1).map((r) => r.status), Array(MAX_SUBSCRIPTIONS).fill("fulfilled"));
  assert.equal(results.at(-1).status, "rejected");
  assert.equal(results.at(-1).reason.code, 429);
  assert.equal(results.at(-1).reason.reason, "too many subscriptions");
  assert.deepEqual(client.subscriptions, apps.slice(0, -1));
  // An explicit ping's round trip.
  assert.ok((await client.ping()) >= 0);
});

test("the gateway's 410 notice drops the app; the client does not resubscribe it", async () => {
  const { client } = await connected({ memberId: OTHER_MEMBER, token: "seven" });
  await client.subscribe("chat");
  await client.subscribe("im");
  const dropped = nextEvent(client, "unsubscribed");
  const answer = await gateway.post("/disconnect", { member_id: OTHER_MEMBER, app: "chat" });
  assert.deepEqual(answer, { status: 200, body: '{"connections":1}' });
  assert.deepEqual(await dropped, { app: "chat", code: 410, message: "unsubscribe chat by server" });
  assert.deepEqual(client.subscriptions, ["im"]);

  const pushes = client.pushes();
  assert.equal(await push("chat", "dropped"), 202);
  assert.equal(await push("im", "kept", OTHER_MEMBER), 202);
  assert.deepEqual((await within(pushes.next(), "a push")).value, { app: "im", memberId: OTHER_MEMBER, text: "kept" });
  await pushes.return();
});

test("close 4403 from POST /disconnect: the client stops for good, no reconnect", async () => {
  // Count the sockets the client makes: a reconnect is a second one. With these delays a client
  // that took 4403 for a passing close would make it within a few milliseconds.
  let sockets = 0;
  const Counting = class extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets += 1;
    }
  };
  const reconnect = { initialDelayMs: 5, maxDelayMs: 5, jitter: 0 };
  const { client } = await connected({ memberId: OTHER_MEMBER, token: "seven", WebSocket: Counting, reconnect });
  await client.subscribe("chat");
  const pushes = client.pushes();
  const closed = nextEvent(client, "close");
  const answer = await gateway.post("/disconnect", { member_id: OTHER_MEMBER });
  assert.equal(answer.status, 200);
  const detail = await closed;
  // Proving an absence takes a wait: 40 times the delay the client would have waited.
  await new Promise((resolve) => setTimeout(resolve, 40 * reconnect.maxDelayMs));
  assert.equal(sockets, 1, "the client opened a new connection after close 4403");
  assert.deepEqual(detail, { code: 4403, reason: "disconnected by the server", reconnectInMs: null });
  assert.equal(client.state, "closed");
  // The iterator reports why it ended; new requests are refused.
  await assert.rejects(within(pushes.next(), "the iterator"), { code: 4403 });
  await assert.rejects(client.subscribe("chat"), { code: 1000 });
});

test("a push to an app named gateway stays a push unless it is exactly a reply", async () => {
  const { client } = await connected();
  assert.deepEqual(await client.subscribe("gateway"), { code: 200, message: "subscribe gateway success" });
  const replies = [];
  client.addEventListener("reply", (event) => replies.push(event.detail));
  const pushes = client.pushes();
  // Each is JSON like a reply but not one (an extra key, a string code, a fraction, another
  // member_id, a malformed position), or not JSON at all; the last is a marker.
  const sent = [
    { text: '{"code":200,"message":"pong","extra":1}', memberId: -1 },
    { text: '{"code":"200","message":"pong"}', memberId: -1 },
    { text: '{"code":200.5,"message":"pong"}', memberId: -1 },
    { text: '{"code":200,"message":7}', memberId: -1 },
    { text: '{"code":200,"message":"pong"}', memberId: OTHER_MEMBER },
    // The keys a recovery's reply may add, but not as it adds them.
    { text: '{"code":200,"message":"pong","recovered":1}', memberId: -1 },
    { text: '{"code":200,"message":"pong","offset":1}', memberId: -1 },
    { text: '{"code":200,"message":"pong","offset":1.5,"epoch":"e"}', memberId: -1 },
    { text: "[200]", memberId: -1 },
    { text: "not JSON", memberId: -1 },
    { text: "the marker", memberId: -1 },
  ];
  for (const { text, memberId } of sent) assert.equal(await push("gateway", text, memberId), 202);
  for (const { text, memberId } of sent) {
    assert.deepEqual((await within(pushes.next(), `the push ${text}`)).value, { app: "gateway", memberId, text });
  }
  await pushes.return();
  assert.deepEqual(replies, []);
  // Replies still match their requests.
  assert.deepEqual(await client.subscribe("after"), { code: 200, message: "subscribe after success" });
  assert.ok((await client.ping()) >= 0);
});
