// ws-gateway.js: the JavaScript client of ws-gateway. One dependency-free ES module for browsers
// and Node.js 20+ (Node 20 needs `--experimental-websocket` for its global WebSocket, or pass a
// `WebSocket` constructor in the options). Served by the gateway at GET /ws-gateway.js.
//
//   import { GatewayClient } from "/ws-gateway.js";
//   const client = new GatewayClient("ws://127.0.0.1:5000/", { memberId: 123456, token: "654321" });
//   client.addEventListener("push", (event) => console.log(event.detail.app, event.detail.text));
//   await client.connect();
//   await client.subscribe("match");        // {code: 200, message: "subscribe match success"}
//   await client.subscribe("score", { recover: true });   // pushes missed while away come after a reconnect
//
// The wire protocol is docs/protocol.md. What this client adds to it: replies matched to their
// requests (they come in request order), automatic reconnects with capped, jittered backoff that
// resubscribe every app still wanted, an application-level ping (`{"action":"ping"}`),
// because browsers cannot send WebSocket pings and so cannot notice a dead connection otherwise,
// and recovery: for an app subscribed with `recover`, it keeps the position of the last push and
// resubscribes with `since` after every reconnect, so the gateway replays what it missed.

/** Close codes after which retrying unchanged is useless (docs/protocol.md): no reconnect. */
export const FINAL_CLOSE_CODES = Object.freeze([4403, 4400, 1002, 1007, 1009]);

/** Every option's default; see {@link GatewayClient} for what each one does. */
export const DEFAULTS = Object.freeze({
  connectTimeoutMs: 10_000,
  authTimeoutMs: 10_000,
  pingIntervalMs: 20_000,
  pingTimeoutMs: 10_000,
  maxBufferedPushes: 1_000,
  reconnect: Object.freeze({
    initialDelayMs: 500,
    maxDelayMs: 30_000,
    factor: 2,
    jitter: 0.5,
    stableAfterMs: 10_000,
  }),
});

/**
 * A refusal: a gateway reply other than 200 (`code` is the reply's code, `reason` its message),
 * or the end of the client (`code` is the close code, `reason` its reason). `code` 0: decided by
 * this client, not the gateway (a cancelled request, an iterator read too slowly).
 */
export class GatewayError extends Error {
  /**
   * @param {number} code
   * @param {string} message
   */
  constructor(code, message) {
    super(`${code} ${message}`);
    this.name = "GatewayError";
    /** @type {number} */
    this.code = code;
    /** @type {string} the reply's message or the close reason, without the code */
    this.reason = message;
  }
}

/**
 * @typedef {object} Reply  A gateway reply: the `text` of an `app: "gateway"`, `member_id: -1` frame
 *   that is exactly `{"code": <integer>, "message": <string>}`, or that with a subscription's
 *   position after them (`recovered`, a boolean, and/or `offset`, an integer >= 0, with `epoch`, a
 *   string). Any other frame is a {@link Push}, including a backend's push to an app named `gateway`.
 * @property {number} code
 * @property {string} message
 * @property {boolean} [recovered]  answer to `since` only: whether every missed push follows
 * @property {number} [offset]  with `epoch`: the stream's newest position (subscriptions with recovery)
 * @property {string} [epoch]
 *
 * @typedef {object} Push  A push as received.
 * @property {string} app
 * @property {number} memberId  the member it was sent to, -1 for everyone
 * @property {string} text  the backend's payload, as it sent it
 * @property {number} [offset]  its position in the app's stream, present only for a subscription
 *   with recovery (and an app that keeps history)
 * @property {string} [epoch]  the run of offsets `offset` belongs to
 *
 * @typedef {object} Position  Where a client stands in a stream: the last push it received.
 *   `{offset: 0, epoch: ""}`: before the stream's first push.
 * @property {number} offset
 * @property {string} epoch
 *
 * @typedef {object} SubscribeOptions
 * @property {boolean} [recover]  pushes carry their position and, after a reconnect, the gateway
 *   replays those missed meanwhile (as far as its history reaches; else a `pushesLost` event)
 * @property {Position} [since]  recover, starting after this position (one kept from an earlier
 *   client, say in `sessionStorage`): what followed it is replayed first
 *
 * @typedef {object} Options
 * @property {number} [memberId]  authenticate as this member (an integer > 0); absent or < 0: anonymous
 * @property {string | (() => string | Promise<string>)} [token]  the member's token, or a function
 *   called before every connection (for tokens that expire)
 * @property {typeof WebSocket} [WebSocket]  the constructor to use; default the global one
 * @property {number} [connectTimeoutMs]  give up a connection attempt not open within this
 * @property {number} [authTimeoutMs]  give up a connection whose auth reply is not in within this
 * @property {number} [pingIntervalMs]  send `{"action":"ping"}` this often once authenticated (0: never)
 * @property {number} [pingTimeoutMs]  drop the connection (and reconnect) when a ping's reply is
 *   not in within this
 * @property {number} [maxBufferedPushes]  pushes an async iterator may hold unread before it
 *   fails (its reader is too slow)
 * @property {false | Partial<typeof DEFAULTS.reconnect>} [reconnect]  backoff between attempts:
 *   `initialDelayMs * factor^attempt`, capped at `maxDelayMs`, less up to `jitter` of it at
 *   random; the attempt count starts over once a connection has stayed up `stableAfterMs`.
 *   `false`: never reconnect.
 */

/**
 * A connection to a gateway that comes back by itself. Events (`addEventListener`), each a
 * `CustomEvent` whose `detail` is:
 * - `open`: `{memberId, code, message}` authenticated (`memberId` null when anonymous, including
 *   after a refused token: `code` 401); the wanted apps are being resubscribed;
 * - `push`: a {@link Push};
 * - `reply`: every gateway {@link Reply}, as it arrives (for logs);
 * - `unsubscribed`: `{app, code, message}` an app was dropped without `unsubscribe()`: the
 *   gateway's 410 notice, or a refused resubscription after a reconnect;
 * - `pushesLost`: `{app, since, offset, epoch, code, message}` a subscription with recovery
 *   missed pushes the gateway can no longer give: those after `since` (the last position this
 *   client had) up to `offset` of `epoch`, where it continues (the next push comes after it).
 *   `code` 200: the resubscription's reply said `"recovered":false` (the history no longer
 *   reaches back, or the stream's history was lost: another epoch); 409: the gateway's unasked
 *   `pushes to <app> lost` notice;
 * - `close`: `{code, reason, reconnectInMs}` a connection ended; `reconnectInMs` is null when the
 *   client has stopped for good (after `close()`, a final close code, or `reconnect: false`).
 *   A ping, connect or auth timeout shows as code 1006 with the timeout as the reason.
 */
export class GatewayClient extends EventTarget {
  /** @type {string} */ #url;
  /** @type {Options} */ #options;
  /** @type {typeof DEFAULTS.reconnect} */ #backoff;
  /** @type {WebSocket | null} */ #socket = null;
  /** @type {"idle" | "connecting" | "open" | "reconnecting" | "closed"} */ #state = "idle";
  /**
   * The apps to (re)subscribe, each with the callers waiting for its next reply and, with
   * recovery, the position of the last push received (null until the first reply tells it).
   * @type {Map<string, {waiters: Array<{resolve: Function, reject: Function}>, dropped: boolean,
   *   recover: boolean, position: Position | null, socket: WebSocket | null}>}
   */
  #wanted = new Map();
  /** What {@link GatewayClient#stats} reports. */
  #stats = { duplicatesDropped: 0, pushesLost: 0 };
  /** Requests sent on this connection whose replies have not come: replies come in this order. */
  #inFlight = [];
  /** Callers of `connect()` waiting for the next `open`. */
  #opening = [];
  #iterators = new Set();
  #attempt = 0;
  #timers = { connect: 0, auth: 0, ping: 0, pingTimeout: 0, stable: 0, reconnect: 0 };
  /** @type {number | null} */ #memberId = null;
  /** The last `open` event's detail, for `connect()` while open. */
  #opened = null;

  /**
   * @param {string | URL} url  the gateway's WebSocket URL, `ws://host:5000/`
   * @param {Options} [options]
   */
  constructor(url, options = {}) {
    super();
    this.#url = String(url);
    const { memberId } = options;
    if (memberId != null && !(Number.isSafeInteger(memberId) && memberId !== 0)) {
      throw new TypeError(`memberId must be an integer > 0 (or < 0 for anonymous), not ${memberId}`);
    }
    const given = (object) => Object.fromEntries(Object.entries(object ?? {}).filter(([, v]) => v !== undefined));
    this.#options = { ...DEFAULTS, ...given(options) };
    this.#backoff = { ...DEFAULTS.reconnect, ...given(options.reconnect || {}) };
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError("no WebSocket: pass options.WebSocket (Node 20: run with --experimental-websocket)");
    }
    this.#options.WebSocket = WebSocketClass;
  }

  /** `"idle"` (before `connect()`), `"connecting"`, `"open"`, `"reconnecting"` or `"closed"`. */
  get state() { return this.#state; }

  /** The member this connection is authenticated as; null when anonymous or not connected. */
  get memberId() { return this.#memberId; }

  /** The apps the client subscribes on every connection, in the order first asked for. */
  get subscriptions() { return [...this.#wanted.keys()]; }

  /**
   * Counts since the client was made: `duplicatesDropped`, pushes of a subscription with
   * recovery at or before the position already received in the same epoch, dropped (the
   * gateway promises none: a defence, expected 0); `pushesLost`, `pushesLost` events.
   * @returns {{duplicatesDropped: number, pushesLost: number}}
   */
  get stats() { return { ...this.#stats }; }

  /**
   * The position a subscription with recovery stands at (the last push received, or the
   * stream's newest when it subscribed): what it resubscribes `since` after a reconnect. Null
   * for an app not subscribed with recovery, or before its first reply.
   * @param {string} app
   * @returns {Position | null}
   */
  position(app) {
    const position = this.#wanted.get(app)?.position;
    return position ? { ...position } : null;
  }

  /**
   * Starts connecting (and reconnecting) if not yet started. Resolves with the `open` event's
   * detail once authenticated; rejects with a {@link GatewayError} if the client stops for good
   * first. A failed attempt is retried with backoff like any lost connection.
   * @returns {Promise<{memberId: number | null, code: number, message: string}>}
   */
  connect() {
    if (this.#state === "closed") return Promise.reject(new GatewayError(1000, "client closed"));
    if (this.#state === "open") return Promise.resolve(this.#opened);
    const opened = new Promise((resolve, reject) => this.#opening.push({ resolve, reject }));
    if (this.#state === "idle") this.#open();
    return opened;
  }

  /**
   * Subscribes to `app` now and after every reconnect, until `unsubscribe(app)`, a refusal or
   * the gateway's 410 notice. Resolves with the gateway's 200 reply; rejects with a
   * {@link GatewayError} for any other reply (403 forbidden, 429 too many subscriptions, 400 bad
   * subscribe message), after which the app is no longer wanted. While disconnected the request
   * waits for the next connection.
   *
   * With `{recover: true}` it sends `{"app":…,"recover":true}`: pushes carry their `offset` and
   * `epoch`, the client keeps the last one's (or the reply's, `{offset: 0, epoch: ""}` when the
   * stream had no push yet), and every resubscription is `{"app":…,"since":{"offset":…,"epoch":…}}`,
   * so the pushes missed while disconnected come first, once and in order. Subscribing again
   * on the same connection sends `recover` again (nothing was missed); without `recover` it
   * turns recovery off.
   * @param {string} app
   * @param {SubscribeOptions} [options]
   * @returns {Promise<Reply>}
   */
  subscribe(app, options = {}) {
    if (typeof app !== "string" || app === "") throw new TypeError("app must be a non-empty string");
    const since = options.since;
    if (since !== undefined && !validPosition(since)) {
      throw new TypeError("since must be {offset: an integer >= 0, epoch: a string}, the epoch empty only with offset 0");
    }
    if (this.#state === "closed") return Promise.reject(new GatewayError(1000, "client closed"));
    let entry = this.#wanted.get(app);
    if (!entry) this.#wanted.set(app, (entry = { waiters: [], dropped: false, recover: false, position: null, socket: null }));
    const recover = Boolean(options.recover) || since !== undefined;
    if (!recover) entry.position = null;
    else if (since !== undefined) entry.position = { offset: since.offset, epoch: since.epoch };
    entry.recover = recover;
    const answered = new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
    if (this.#state === "open") this.#sendSubscribe(app, entry);
    return answered;
  }

  /**
   * Stops wanting `app` at once (it is not resubscribed after a reconnect). Connected: sends
   * the unsubscribe request and resolves with the gateway's 200 reply (after which no push for
   * `app` arrives), or rejects with a {@link GatewayError} (404 not subscribed). Not connected,
   * or disconnected before the reply: nothing is left to undo on the gateway; resolves with null.
   * @param {string} app
   * @returns {Promise<Reply | null>}
   */
  unsubscribe(app) {
    if (typeof app !== "string" || app === "") throw new TypeError("app must be a non-empty string");
    const entry = this.#wanted.get(app);
    if (entry) {
      entry.dropped = true;
      this.#wanted.delete(app);
      for (const waiter of entry.waiters.splice(0)) {
        waiter.reject(new GatewayError(0, `subscribe ${app} cancelled by unsubscribe`));
      }
    }
    if (this.#state !== "open") return Promise.resolve(null);
    return this.#request({ app, action: "unsubscribe" }, { kind: "unsubscribe", app });
  }

  /**
   * Sends any other client message (a verb this client has no method for) and resolves with
   * its 200 reply, or rejects with a {@link GatewayError} (400 `unknown action` for a verb the
   * gateway does not know). Only while connected: it is not repeated after a reconnect.
   * @param {object} message  e.g. `{app: "chat", action: "…"}`
   * @returns {Promise<Reply>}
   */
  request(message) {
    if (this.#state !== "open") return Promise.reject(new GatewayError(0, "not connected"));
    return this.#request(message, { kind: "request" });
  }

  /**
   * Sends an application-level ping now; resolves with the round trip in milliseconds. (The
   * client pings by itself every `pingIntervalMs`; this is for an explicit check.)
   * @returns {Promise<number>}
   */
  ping() {
    if (this.#state !== "open") return Promise.reject(new GatewayError(0, "not connected"));
    const sent = Date.now();
    return this.#request({ action: "ping" }, { kind: "ping" }).then(() => Date.now() - sent);
  }

  /**
   * Closes the connection (code 1000) and stops for good: no reconnect, pending promises are
   * rejected, async iterators end.
   */
  close() {
    if (this.#state === "closed") return;
    const socket = this.#socket;
    this.#detach();
    try { socket?.close(1000, "client closed"); } catch { /* already closing */ }
    this.#ended(1000, "client closed", true);
  }

  /**
   * The pushes, as an async iterator: `for await (const push of client.pushes()) …`. Each call
   * gets its own iterator, which sees the pushes that arrive from then on. It ends when the
   * client is closed, and throws a {@link GatewayError} when the client stops on a final close
   * code or when more than `maxBufferedPushes` pushes wait unread.
   * @returns {AsyncIterableIterator<Push>}
   */
  pushes() {
    const limit = this.#options.maxBufferedPushes;
    const queue = [];
    let wake = null;
    let end = null;   // {done: true} or {error}
    const sink = {
      push: (push) => {
        if (end) return;
        if (queue.length >= limit) {
          sink.finish({ error: new GatewayError(0, `more than ${limit} pushes waiting unread (maxBufferedPushes)`) });
          return;
        }
        queue.push(push);
        wake?.();
      },
      finish: (how) => {
        end ??= how;
        this.#iterators.delete(sink);
        wake?.();
      },
    };
    if (this.#state === "closed") end = { done: true };
    else this.#iterators.add(sink);
    return {
      [Symbol.asyncIterator]() { return this; },
      async next() {
        for (;;) {
          if (queue.length) return { value: queue.shift(), done: false };
          if (end?.error) throw end.error;
          if (end) return { value: undefined, done: true };
          await new Promise((resolve) => { wake = resolve; });
          wake = null;
        }
      },
      async return() {
        sink.finish({ done: true });
        queue.length = 0;
        return { value: undefined, done: true };
      },
    };
  }

  /** `for await (const push of client)`: the same as {@link GatewayClient#pushes}. */
  [Symbol.asyncIterator]() { return this.pushes(); }

  // --- one connection ----------------------------------------------------------------------

  async #open() {
    this.#state = "connecting";
    let token = "";
    const member = this.#options.memberId ?? -1;
    if (member > 0) {
      try {
        const source = this.#options.token ?? "";
        token = String(typeof source === "function" ? await source() : source);
      } catch (error) {
        this.#lost(1006, `token function failed: ${error?.message ?? error}`);
        return;
      }
      if (this.#state !== "connecting") return;   // closed meanwhile
    }
    let socket;
    try {
      socket = new this.#options.WebSocket(this.#url);
    } catch (error) {
      // A malformed URL will not get better by retrying.
      this.#ended(1006, `cannot connect to ${this.#url}: ${error?.message ?? error}`, false);
      return;
    }
    this.#socket = socket;
    socket.binaryType = "arraybuffer";
    this.#after("connect", this.#options.connectTimeoutMs, () =>
      this.#lost(1006, `connect timeout: not open within ${this.#options.connectTimeoutMs} ms`));
    socket.onopen = () => {
      clearTimeout(this.#timers.connect);
      socket.send(JSON.stringify({ member_id: member > 0 ? member : -1, token }));
      this.#after("auth", this.#options.authTimeoutMs, () =>
        this.#lost(1006, `auth timeout: no reply within ${this.#options.authTimeoutMs} ms`));
    };
    socket.onmessage = (event) => this.#onFrame(event.data, member);
    socket.onclose = (event) => this.#lost(event.code, event.reason);
    // Browsers follow an error with a close event (1006 when the connection failed); Node 20's
    // WebSocket does not after a failed connection attempt, so an error before `open` ends it.
    socket.onerror = () => {
      if (socket.readyState === socket.CONNECTING) this.#lost(1006, "cannot connect");
    };
  }

  #onFrame(data, member) {
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      return;   // the gateway sends JSON only; nothing to do with anything else
    }
    // A backend may push to an app named "gateway" (with any text): only the gateway's own
    // envelope (member_id -1) around exactly a reply is a reply; anything else is a push.
    const reply = frame?.app === "gateway" && frame.member_id === -1 ? replyIn(frame.text) : null;
    if (!reply) {
      this.#onPush(frame);
      return;
    }
    this.#emit("reply", reply);
    if (this.#state === "connecting") this.#authenticated(reply, member);
    else if (reply.code === 410) this.#droppedByServer(reply);
    else if (reply.code === 409 && reply.recovered === false) this.#lostNotice(reply);
    else this.#settle(this.#inFlight.shift(), reply);
  }

  #onPush(frame) {
    const push = { app: frame?.app, memberId: frame?.member_id, text: frame?.text };
    const position = validPosition(frame) && frame.epoch !== "" ? { offset: frame.offset, epoch: frame.epoch } : null;
    if (position) Object.assign(push, position);
    const entry = position && this.#wanted.get(push.app);
    if (entry?.recover && entry.position) {
      // The gateway sends every position once; a second copy would be a bug somewhere on the
      // way (a broker's redelivery, say): dropped, and counted so that it shows.
      if (entry.position.epoch === position.epoch && position.offset <= entry.position.offset) {
        this.#stats.duplicatesDropped += 1;
        return;
      }
      entry.position = position;
    }
    this.#emit("push", push);
    for (const sink of this.#iterators) sink.push(push);
  }

  /** The auth reply: 200 hello, or 401 and anonymous; a 400 is followed by close 4400. */
  #authenticated(reply, member) {
    if (reply.code !== 200 && reply.code !== 401) return;
    clearTimeout(this.#timers.auth);
    this.#state = "open";
    this.#memberId = reply.code === 200 && member > 0 ? member : null;
    this.#after("stable", this.#backoff.stableAfterMs, () => { this.#attempt = 0; });
    if (this.#options.pingIntervalMs > 0) {
      this.#timers.ping = setInterval(() => this.#autoPing(), this.#options.pingIntervalMs);
    }
    for (const [app, entry] of this.#wanted) this.#sendSubscribe(app, entry);
    const detail = { memberId: this.#memberId, code: reply.code, message: reply.message };
    this.#opened = detail;
    this.#emit("open", detail);
    for (const caller of this.#opening.splice(0)) caller.resolve(detail);
  }

  #autoPing() {
    if (this.#inFlight.some((request) => request.kind === "ping")) return;
    this.ping().catch(() => { /* the timeout below, or the close, says it */ });
    const ms = this.#options.pingTimeoutMs;
    this.#after("pingTimeout", ms, () => this.#lost(1006, `ping timeout: no reply within ${ms} ms`));
  }

  #sendSubscribe(app, entry) {
    const waiters = entry.waiters.splice(0);
    // `since` only on a connection that has not asked for the app yet: on one that has, nothing
    // was missed, and a replay would repeat pushes still on their way.
    const asked = entry.socket === this.#socket;
    entry.socket = this.#socket;
    let message = { app };
    if (entry.recover && entry.position && !asked) message = { app, since: { ...entry.position } };
    else if (entry.recover) message = { app, recover: true };
    this.#send(message, { kind: "subscribe", app, entry, waiters, since: message.since ?? null, recover: entry.recover });
  }

  #request(message, request) {
    return new Promise((resolve, reject) => this.#send(message, { ...request, waiters: [{ resolve, reject }] }));
  }

  #send(message, request) {
    this.#inFlight.push(request);
    this.#socket.send(JSON.stringify(message));
  }

  /** Settles the oldest request with its reply: replies come in request order. */
  #settle(request, reply) {
    if (!request) return;   // a reply nobody asked for: the gateway sends none
    if (request.kind === "ping") clearTimeout(this.#timers.pingTimeout);
    if (request.kind === "subscribe" && request.entry) {
      const current = this.#wanted.get(request.app);
      if (reply.code === 200) {
        // Asked for again after a refusal: it is wanted again, unless unsubscribed since.
        if (!current && !request.entry.dropped) this.#wanted.set(request.app, request.entry);
        if (request.recover && request.entry.recover) this.#subscribedAt(request, reply);
      } else if (current === request.entry) {
        this.#wanted.delete(request.app);
        for (const waiter of current.waiters.splice(0)) request.waiters.push(waiter);
        if (request.waiters.length === 0) {
          this.#emit("unsubscribed", { app: request.app, code: reply.code, message: reply.message });
        }
      }
    }
    for (const waiter of request.waiters) {
      if (reply.code === 200) waiter.resolve(reply);
      else waiter.reject(new GatewayError(reply.code, reply.message));
    }
  }

  /**
   * A subscription with recovery answered: where the stream stands. After `recover` the live
   * stream continues after the reply's position; after `since`, with `recovered: true`, the
   * missed pushes follow (the client's own position stays), with `recovered: false` they are
   * lost and the stream continues after the reply's position.
   */
  #subscribedAt(request, reply) {
    const entry = request.entry;
    const top = reply.epoch !== undefined ? { offset: reply.offset, epoch: reply.epoch } : { offset: 0, epoch: "" };
    if (!request.since) {
      entry.position = top;
    } else if (reply.recovered === false) {
      entry.position = top;
      this.#pushesLost(request.app, request.since, reply);
    }
  }

  /** `{"code":409,"message":"pushes to <app> lost","recovered":false,"offset":…,"epoch":…}`. */
  #lostNotice(reply) {
    const found = /^pushes to (.*) lost$/.exec(reply.message);
    if (!found || reply.epoch === undefined) return;
    const app = found[1];
    const entry = this.#wanted.get(app);
    const since = entry?.position ? { ...entry.position } : null;
    // The notice comes before the first push after the hole; a position already past it (a
    // push that got here anyway) is kept.
    if (entry?.recover && !(since?.epoch === reply.epoch && since.offset >= reply.offset)) {
      entry.position = { offset: reply.offset, epoch: reply.epoch };
    }
    this.#pushesLost(app, since, reply);
  }

  #pushesLost(app, since, reply) {
    this.#stats.pushesLost += 1;
    this.#emit("pushesLost", {
      app,
      since,
      offset: reply.offset ?? 0,
      epoch: reply.epoch ?? "",
      code: reply.code,
      message: reply.message,
    });
  }

  /** `{"code":410,"message":"unsubscribe <app> by server"}`: not to be resubscribed. */
  #droppedByServer(reply) {
    const found = /^unsubscribe (.*) by server$/.exec(reply.message ?? "");
    if (!found) return;
    const app = found[1];
    const entry = this.#wanted.get(app);
    if (entry) {
      entry.dropped = true;
      this.#wanted.delete(app);
    }
    this.#emit("unsubscribed", { app, code: reply.code, message: reply.message });
  }

  /** The connection ended (closed, or dropped here after a timeout): reconnect or stop. */
  #lost(code, reason) {
    if (this.#state === "closed") return;
    const socket = this.#socket;
    this.#detach();
    // After a timeout the socket may still be open (a frozen peer): do not wait for it.
    try { socket?.close(); } catch { /* already closing */ }
    // Subscriptions still wanted are asked for again on the next connection; their callers wait
    // for that reply. Unsubscribes and pings have nothing left to answer.
    for (const request of this.#inFlight.splice(0)) {
      const entry = request.kind === "subscribe" ? this.#wanted.get(request.app) : null;
      if (entry) entry.waiters.unshift(...request.waiters);
      else if (request.kind === "unsubscribe") request.waiters.forEach((waiter) => waiter.resolve(null));
      else request.waiters.forEach((waiter) => waiter.reject(new GatewayError(code, reason)));
    }
    if (this.#options.reconnect === false || FINAL_CLOSE_CODES.includes(code)) {
      this.#ended(code, reason, false);
      return;
    }
    const { initialDelayMs, maxDelayMs, factor, jitter } = this.#backoff;
    const capped = Math.min(maxDelayMs, initialDelayMs * factor ** this.#attempt);
    const delay = Math.round(capped * (1 - jitter * Math.random()));
    this.#attempt += 1;
    this.#state = "reconnecting";
    this.#after("reconnect", delay, () => this.#open());
    this.#emit("close", { code, reason, reconnectInMs: delay });
  }

  /** Stops for good: every waiting promise is rejected, every iterator ends. */
  #ended(code, reason, byClient) {
    this.#detach();
    this.#state = "closed";
    const error = new GatewayError(code, reason);
    for (const request of this.#inFlight.splice(0)) {
      request.waiters.forEach((waiter) => (request.kind === "unsubscribe" ? waiter.resolve(null) : waiter.reject(error)));
    }
    for (const entry of this.#wanted.values()) entry.waiters.splice(0).forEach((waiter) => waiter.reject(error));
    for (const caller of this.#opening.splice(0)) caller.reject(error);
    for (const sink of [...this.#iterators]) sink.finish(byClient ? { done: true } : { error });
    this.#emit("close", { code, reason, reconnectInMs: null });
  }

  /** Forgets the current socket (its late events are ignored) and every timer. */
  #detach() {
    if (this.#socket) {
      this.#socket.onopen = this.#socket.onmessage = this.#socket.onclose = null;
      this.#socket.onerror = () => {};
      this.#socket = null;
    }
    for (const name of Object.keys(this.#timers)) {
      clearTimeout(this.#timers[name]);
      clearInterval(this.#timers[name]);
    }
    this.#memberId = null;
  }

  #after(name, ms, then) {
    clearTimeout(this.#timers[name]);
    this.#timers[name] = setTimeout(then, ms);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * The {@link Reply} in a gateway frame's `text`: exactly `{"code":<integer>,"message":<string>}`,
 * optionally followed by `"recovered":<boolean>` and/or `"offset":<integer>,"epoch":<string>`
 * (docs/protocol.md, "History and recovery"); null for any other text.
 * @param {unknown} text
 * @returns {Reply | null}
 */
function replyIn(text) {
  let reply;
  try {
    reply = JSON.parse(String(text));
  } catch {
    return null;
  }
  if (reply === null || typeof reply !== "object" || Array.isArray(reply)) return null;
  if (!Number.isSafeInteger(reply.code) || typeof reply.message !== "string") return null;
  const shaped = { code: reply.code, message: reply.message };
  let keys = 2;
  if ("recovered" in reply) {
    if (typeof reply.recovered !== "boolean") return null;
    shaped.recovered = reply.recovered;
    keys += 1;
  }
  if ("offset" in reply || "epoch" in reply) {
    if (!validPosition(reply) || reply.epoch === "") return null;
    shaped.offset = reply.offset;
    shaped.epoch = reply.epoch;
    keys += 2;
  }
  return Object.keys(reply).length === keys ? shaped : null;
}

/** Whether `value` has a position: `offset` an integer >= 0, `epoch` a string, empty only with 0. */
function validPosition(value) {
  return value !== null && typeof value === "object"
    && Number.isSafeInteger(value.offset) && value.offset >= 0 && typeof value.epoch === "string"
    && (value.epoch !== "" || value.offset === 0);
}
