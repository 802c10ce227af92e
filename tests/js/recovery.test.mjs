// ws-gateway.js recovery against the real binary (docs/protocol.md, "History and recovery"):
// the exact subscribe requests (recover, then since on every reconnect), pushes missed while a
// TCP proxy had cut the connection replayed once and in order, steady pushes through repeated
// cuts, and the recoveries that cannot be (history too short, a restarted gateway's new epoch)
// raising `pushesLost`. The local broker keeps history in the gateway's memory, so the cuts are
// the network's (the proxy), not a killed gateway, except where the lost history is the point.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";

import {
  CONFIG, CutProxy, MEMBER, TOKEN, loadClient, nextEvent, recordingWebSocket, startGateway, within,
} from "./helpers.mjs";

// Quick reconnects; no automatic pings, so that the recorded frames are the requests alone.
const OPTIONS = {
  pingIntervalMs: 0,
  reconnect: { initialDelayMs: 10, maxDelayMs: 100, factor: 2, jitter: 0.5, stableAfterMs: 60_000 },
};
// Every test ends within this, even when a reply it awaits never comes.
const BOUNDED = { timeout: 30_000 };
let cleanup = [];

afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

async function gatewayAndProxy(config = CONFIG) {
  const gateway = await startGateway(config);
  const started = { gateway };
  cleanup.push(() => started.gateway.stop());
  const proxy = await CutProxy.start(gateway.main);
  cleanup.push(() => proxy.close());
  const module = await loadClient(gateway);
  return { started, gateway, proxy, module };
}

/** A client through `proxy`, connected; `sent` records each connection's frames. */
async function clientThrough(module, proxy, options = {}) {
  const { Recording, sent } = recordingWebSocket();
  const client = new module.GatewayClient(`ws://${proxy.address}/`, { ...OPTIONS, WebSocket: Recording, ...options });
  cleanup.push(() => client.close());
  await within(client.connect(), "connect");
  const lost = [];
  client.addEventListener("pushesLost", (event) => lost.push(event.detail));
  return { client, sent, lost };
}

/** The next `count` pushes of `iterator`. */
async function take(iterator, count, what = "pushes") {
  const pushes = [];
  while (pushes.length < count) {
    pushes.push((await within(iterator.next(), `${what}: ${pushes.length} of ${count}`)).value);
  }
  return pushes;
}

const replied = (client, app) =>
  nextEvent(client, "reply", (reply) => reply.message === `subscribe ${app} success`);

/** Cuts the client's connection and keeps it away until `back()`. */
async function cutAway(client, proxy) {
  const lost = nextEvent(client, "close");
  proxy.blocked = true;
  proxy.cut();
  assert.equal((await lost).code, 1006);
  return () => { proxy.blocked = false; };
}

test("subscribe requests: recover first, then since with the last position on every reconnect", BOUNDED, async () => {
  const { gateway, proxy, module } = await gatewayAndProxy();
  const { client, sent, lost } = await clientThrough(module, proxy);
  assert.deepEqual(await client.subscribe("plain"), { code: 200, message: "subscribe plain success" });
  // No push yet: the reply has no position, the client stands before the first one.
  assert.deepEqual(await client.subscribe("match", { recover: true }), { code: 200, message: "subscribe match success" });
  assert.deepEqual(client.position("match"), { offset: 0, epoch: "" });
  assert.equal(client.position("plain"), null);

  const pushes = client.pushes();
  assert.equal(await gateway.push("match", -1, "m1"), 202);
  assert.equal(await gateway.push("match", -1, "m2"), 202);
  assert.equal(await gateway.push("plain", -1, "p1"), 202);
  const [m1, m2, p1] = await take(pushes, 3);
  const epoch = m1.epoch;
  assert.match(epoch, /^[A-Za-z0-9_-]{1,64}$/);
  assert.deepEqual([m1, m2, p1], [
    { app: "match", memberId: -1, text: "m1", offset: 1, epoch },
    { app: "match", memberId: -1, text: "m2", offset: 2, epoch },
    { app: "plain", memberId: -1, text: "p1" },
  ]);
  assert.deepEqual(client.position("match"), { offset: 2, epoch });

  // A later subscriber with recovery starts at the stream's newest position.
  assert.deepEqual(await client.subscribe("news", { recover: true }), { code: 200, message: "subscribe news success" });
  const late = await clientThrough(module, proxy);
  assert.deepEqual(await late.client.subscribe("match", { recover: true }),
    { code: 200, message: "subscribe match success", offset: 2, epoch });

  const resubscribed = [replied(client, "plain"), replied(client, "match"), replied(client, "news")];
  proxy.cut();
  const [plain, match, news] = await within(Promise.all(resubscribed), "the resubscriptions");
  assert.deepEqual(plain, { code: 200, message: "subscribe plain success" });
  assert.deepEqual(match, { code: 200, message: "subscribe match success", recovered: true, offset: 2, epoch });
  // Still no push to news: nothing missed, and nothing to say where the stream stands.
  assert.deepEqual(news, { code: 200, message: "subscribe news success", recovered: true });
  assert.deepEqual(sent.slice(0, 2), [
    [
      '{"member_id":-1,"token":""}',
      '{"app":"plain"}',
      '{"app":"match","recover":true}',
      '{"app":"news","recover":true}',
    ],
    [
      '{"member_id":-1,"token":""}',
      '{"app":"plain"}',
      `{"app":"match","since":{"offset":2,"epoch":"${epoch}"}}`,
      '{"app":"news","since":{"offset":0,"epoch":""}}',
    ],
  ]);

  // Asked again on the same connection: nothing was missed, so recover, not since.
  assert.deepEqual(await client.subscribe("match", { recover: true }),
    { code: 200, message: "subscribe match success", offset: 2, epoch });
  assert.equal(sent[1].at(-1), '{"app":"match","recover":true}');
  assert.deepEqual(client.position("match"), { offset: 2, epoch });

  // A position kept elsewhere (a previous page's client) starts a subscription with since.
  const resumed = await clientThrough(module, proxy);
  const replay = resumed.client.pushes();
  assert.deepEqual(await resumed.client.subscribe("match", { since: { offset: 1, epoch } }),
    { code: 200, message: "subscribe match success", recovered: true, offset: 2, epoch });
  assert.deepEqual((await take(replay, 1))[0], { app: "match", memberId: -1, text: "m2", offset: 2, epoch });
  assert.equal(resumed.sent[0][1], `{"app":"match","since":{"offset":1,"epoch":"${epoch}"}}`);
  assert.throws(() => resumed.client.subscribe("match", { since: { offset: 3, epoch: "" } }), TypeError);
  assert.throws(() => resumed.client.subscribe("match", { since: { offset: -1, epoch } }), TypeError);

  // Subscribing again without recover turns it off: plain pushes, a plain resubscription.
  assert.deepEqual(await client.subscribe("match"), { code: 200, message: "subscribe match success" });
  assert.equal(client.position("match"), null);
  assert.equal(await gateway.push("match", -1, "m3"), 202);
  assert.deepEqual((await take(pushes, 1))[0], { app: "match", memberId: -1, text: "m3" });
  assert.equal(sent[1].at(-1), '{"app":"match"}');
  await pushes.return();
  await replay.return();
  assert.deepEqual(lost, []);
  assert.deepEqual(client.stats, { duplicatesDropped: 0, pushesLost: 0 });
});

test("pushes sent while the connection was cut are replayed once, in order, with positions", BOUNDED, async () => {
  const { gateway, proxy, module } = await gatewayAndProxy();
  const { client, lost } = await clientThrough(module, proxy, { memberId: MEMBER, token: TOKEN });
  await client.subscribe("match", { recover: true });
  await client.subscribe("im", { recover: true });   // private: this member's own stream
  const pushes = client.pushes();
  const texts = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => `n${from + i}`);
  for (const text of texts(1, 3)) assert.equal(await gateway.push("match", -1, text), 202);
  assert.equal(await gateway.push("im", MEMBER, "private 1"), 202);
  await take(pushes, 4, "before the cut");

  const back = await cutAway(client, proxy);
  for (const text of texts(4, 6)) assert.equal(await gateway.push("match", -1, text), 202);
  assert.equal(await gateway.push("im", MEMBER, "private 2"), 202);
  const resubscribed = [replied(client, "match"), replied(client, "im")];
  back();
  const [match, im] = await within(Promise.all(resubscribed), "the resubscriptions");
  assert.equal(match.recovered, true);
  assert.equal(match.offset, 6);
  assert.deepEqual([im.recovered, im.offset], [true, 2]);
  for (const text of texts(7, 8)) assert.equal(await gateway.push("match", -1, text), 202);

  const received = await take(pushes, 6, "after the cut");
  const epoch = received[0].epoch;
  const im2 = received.find((push) => push.app === "im");
  assert.deepEqual(im2, { app: "im", memberId: MEMBER, text: "private 2", offset: 2, epoch: im2.epoch });
  assert.deepEqual(received.filter((push) => push.app === "match"),
    texts(4, 8).map((text, i) => ({ app: "match", memberId: -1, text, offset: 4 + i, epoch })));
  await pushes.return();
  assert.deepEqual(lost, []);
  assert.deepEqual(client.stats, { duplicatesDropped: 0, pushesLost: 0 });
});

/**
 * Pushes numbered texts to `match` for `ms` while the proxy cuts the client's connection every
 * 100 to 250 ms; then waits for the last push (recovery) or a marker (no recovery). Returns the
 * numbers received and how many were sent.
 */
async function pushThroughCuts(recover, ms = 2_000) {
  const { gateway, proxy, module } = await gatewayAndProxy();
  const { client, lost } = await clientThrough(module, proxy);
  const numbers = [];
  const positions = [];
  client.addEventListener("push", ({ detail }) => {
    if (detail.app !== "match") return;
    numbers.push(Number(detail.text));
    positions.push(detail.offset);
  });
  await client.subscribe("match", { recover });
  let cutting = true;
  const cuts = (async () => {
    while (cutting) {
      await new Promise((resolve) => setTimeout(resolve, 100 + Math.random() * 150));
      proxy.cut();
    }
  })();
  let sent = 0;
  const until = Date.now() + ms;
  while (Date.now() < until) {
    sent += 1;
    assert.equal(await gateway.push("match", -1, String(sent)), 202);
    await new Promise((resolve) => setTimeout(resolve, 5));   // a steady pace, not a wait
  }
  cutting = false;
  await cuts;
  // The last push (recovered after the last cut if need be) ends the stream; without
  // recovery a marker on a fresh subscription does.
  if (recover) {
    if (numbers.at(-1) !== sent) await nextEvent(client, "push", (push) => push.text === String(sent));
  } else {
    const marker = nextEvent(client, "push", (push) => push.app === "marker");
    await client.subscribe("marker");
    assert.equal(await gateway.push("marker", -1, "end"), 202);
    await marker;
  }
  return { numbers, positions, sent, lost, stats: client.stats, sockets: proxy.accepted };
}

test("steady pushes through repeated cuts: with recovery every push arrives once and in order", BOUNDED, async () => {
  const { numbers, positions, sent, lost, stats, sockets } = await pushThroughCuts(true);
  assert.ok(sockets >= 5, `only ${sockets} connections: the proxy did not cut`);
  assert.deepEqual(numbers, Array.from({ length: sent }, (_, i) => i + 1));
  assert.deepEqual(positions, numbers);
  assert.deepEqual(lost, []);
  assert.deepEqual(stats, { duplicatesDropped: 0, pushesLost: 0 });
});

test("steady pushes through repeated cuts: without recovery pushes are lost (the test above can fail)", BOUNDED, async () => {
  const { numbers, sent, sockets } = await pushThroughCuts(false);
  assert.ok(sockets >= 5, `only ${sockets} connections: the proxy did not cut`);
  assert.ok(numbers.length < sent, `all ${sent} arrived without recovery`);
  assert.ok(numbers.every((n, i) => i === 0 || n > numbers[i - 1]), "out of order");
});

/**
 * A client at offset 1 is away while `away` pushes are made: more than the history keeps. Its
 * resubscription is answered `recovered:false`, a `pushesLost` event says from where to where,
 * and the live stream follows.
 */
async function tooFarBack(config, away) {
  const { gateway, proxy, module } = await gatewayAndProxy(config);
  const { client, lost } = await clientThrough(module, proxy);
  await client.subscribe("match", { recover: true });
  const pushes = client.pushes();
  assert.equal(await gateway.push("match", -1, "first"), 202);
  const [{ epoch }] = await take(pushes, 1);

  const back = await cutAway(client, proxy);
  for (let n = 1; n <= away; n++) assert.equal(await gateway.push("match", -1, `away ${n}`), 202);
  const event = nextEvent(client, "pushesLost");
  const reply = replied(client, "match");
  back();
  const top = 1 + away;
  assert.deepEqual(await reply, { code: 200, message: "subscribe match success", recovered: false, offset: top, epoch });
  assert.deepEqual(await event, {
    app: "match", since: { offset: 1, epoch }, offset: top, epoch, code: 200, message: "subscribe match success",
  });
  assert.deepEqual(client.position("match"), { offset: top, epoch });
  // Nothing is replayed: the next push is the live one.
  assert.equal(await gateway.push("match", -1, "live"), 202);
  assert.deepEqual((await take(pushes, 1))[0], { app: "match", memberId: -1, text: "live", offset: top + 1, epoch });
  await pushes.return();
  assert.equal(lost.length, 1);
  assert.deepEqual(client.stats, { duplicatesDropped: 0, pushesLost: 1 });
}

test("away longer than the history reaches (100 pushes by default): recovered false, pushesLost", BOUNDED, async () => {
  await tooFarBack(CONFIG, 101);
});

test("away longer than a small history ([history] size = 2): recovered false, pushesLost", BOUNDED, async () => {
  await tooFarBack(`${CONFIG}\n[history]\nsize = 2\n`, 3);
});

test("the gateway restarted (its history lost): the new epoch comes with pushesLost", BOUNDED, async () => {
  const { started, gateway, proxy, module } = await gatewayAndProxy();
  const { client, lost } = await clientThrough(module, proxy);
  await client.subscribe("match", { recover: true });
  const pushes = client.pushes();
  assert.equal(await gateway.push("match", -1, "before"), 202);
  const [{ epoch: before }] = await take(pushes, 1);

  const back = await cutAway(client, proxy);
  await gateway.kill();
  started.gateway = await gateway.restart();
  assert.equal(await started.gateway.push("match", -1, "lost with the restart"), 202);
  const event = nextEvent(client, "pushesLost");
  back();
  const { since, offset, epoch, code } = await event;
  assert.deepEqual(since, { offset: 1, epoch: before });
  assert.notEqual(epoch, before);
  assert.deepEqual([offset, code], [1, 200]);
  assert.equal(await started.gateway.push("match", -1, "after"), 202);
  assert.deepEqual((await take(pushes, 1))[0], { app: "match", memberId: -1, text: "after", offset: 2, epoch });
  await pushes.return();
  assert.equal(lost.length, 1);
  assert.deepEqual(client.stats, { duplicatesDropped: 0, pushesLost: 1 });
});

// The gateway sends `409 pushes to <app> lost` only with a broker between nodes (a publication
// lost on its way and gone from the history too), and never sends a push twice: a scripted
// socket stands in for it here.
class ScriptedSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 3;
  CONNECTING = 0;
  OPEN = 1;
  /** Called with each socket once it is open (and the client has sent its auth message). */
  static onOpen = () => {};
  readyState = 0;
  sent = [];

  constructor(url) {
    this.url = url;
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.();
      ScriptedSocket.onOpen(this);
    });
  }

  /** The next socket the client makes, once open. */
  static next() {
    return within(new Promise((resolve) => { ScriptedSocket.onOpen = resolve; }), "a connection");
  }

  send(data) { this.sent.push(String(data)); }

  close() { this.readyState = 3; }

  /** A frame from the gateway: a push, or with `reply` a gateway reply around it. */
  receive(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }

  reply(text) { this.receive({ app: "gateway", member_id: -1, text: JSON.stringify(text) }); }

  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }
}

test("the 409 notice and a duplicate push (scripted gateway): events, stats, the next since", BOUNDED, async () => {
  const { module } = await gatewayAndProxy();
  const client = new module.GatewayClient("ws://scripted/", {
    ...OPTIONS, WebSocket: ScriptedSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 1, jitter: 0 },
  });
  cleanup.push(() => client.close());
  const lost = [];
  client.addEventListener("pushesLost", (event) => lost.push(event.detail));
  const replies = [];
  client.addEventListener("reply", (event) => replies.push(event.detail));
  const delivered = [];
  client.addEventListener("push", (event) => delivered.push(event.detail));

  let opened = ScriptedSocket.next();
  const connected = client.connect();
  const first = await opened;
  first.reply({ code: 200, message: "hello stranger" });
  await within(connected, "connect");
  const subscribed = client.subscribe("match", { recover: true });
  first.reply({ code: 200, message: "subscribe match success", offset: 40, epoch: "e1" });
  assert.deepEqual(await subscribed, { code: 200, message: "subscribe match success", offset: 40, epoch: "e1" });

  const push = (text, offset, epoch = "e1") => first.receive({ app: "match", member_id: -1, text, offset, epoch });
  push("41", 41);
  push("41 again", 41);
  push("40", 40);
  // The notice comes unasked: it answers no request (the ping is answered by the pong after).
  const pinged = client.ping();
  first.reply({ code: 409, message: "pushes to match lost", recovered: false, offset: 45, epoch: "e1" });
  first.reply({ code: 200, message: "pong" });
  assert.ok((await within(pinged, "the pong")) >= 0);
  push("46", 46);
  // Like a reply but not exactly one: pushes (to an app named gateway).
  const notReplies = [
    { code: 200, message: "x", offset: 1 },
    { code: 200, message: "x", offset: 1, epoch: "" },
    { code: 200, message: "x", recovered: "no" },
    { code: 409, message: "pushes to match lost", recovered: false, offset: 47, epoch: "e1", more: 1 },
  ];
  for (const text of notReplies) first.reply(text);

  assert.deepEqual(delivered.slice(0, 2), [
    { app: "match", memberId: -1, text: "41", offset: 41, epoch: "e1" },
    { app: "match", memberId: -1, text: "46", offset: 46, epoch: "e1" },
  ]);
  assert.deepEqual(delivered.slice(2).map((d) => JSON.parse(d.text)), notReplies);
  assert.deepEqual(lost, [{
    app: "match", since: { offset: 41, epoch: "e1" }, offset: 45, epoch: "e1", code: 409, message: "pushes to match lost",
  }]);
  assert.deepEqual(replies.at(-2), { code: 409, message: "pushes to match lost", recovered: false, offset: 45, epoch: "e1" });
  assert.deepEqual(client.stats, { duplicatesDropped: 2, pushesLost: 1 });

  const reopened = nextEvent(client, "open");
  opened = ScriptedSocket.next();
  first.drop();
  const second = await opened;
  second.reply({ code: 200, message: "hello stranger" });
  await reopened;
  assert.deepEqual(second.sent, ['{"member_id":-1,"token":""}', '{"app":"match","since":{"offset":46,"epoch":"e1"}}']);
});
