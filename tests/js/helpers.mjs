// What the JavaScript client's tests share: the real binary (tests/browser/gateway.mjs starts
// it), the client module as the gateway serves it, waiting for an event with a deadline, and a
// TCP proxy that cuts connections the way a lost network does.

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { Gateway } from "../browser/gateway.mjs";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const BINARY = process.env.GATEWAY_BINARY || join(ROOT, "target/debug/ws-gateway");
/** The longest any single step may take (the machine may be busy). */
export const WAIT_MS = 10_000;

export const MEMBER = 123456;
export const TOKEN = "654321";
export const OTHER_MEMBER = 7;
export const MAX_SUBSCRIPTIONS = 8;
export const CONFIG = `
[limits]
max_subscriptions = ${MAX_SUBSCRIPTIONS}
[auth]
kind = "static"
[auth.tokens]
${MEMBER} = "${TOKEN}"
${OTHER_MEMBER} = "seven"
`;

export async function startGateway(config = CONFIG) {
  assert.ok(existsSync(BINARY), `no gateway binary at ${BINARY} (set GATEWAY_BINARY)`);
  assert.equal(typeof WebSocket, "function", "no global WebSocket: Node 20 needs --experimental-websocket");
  return Gateway.start(BINARY, config);
}

/**
 * Imports ws-gateway.js as the gateway serves it at GET /ws-gateway.js (saved as .mjs: Node 20
 * reads a .js file outside a "type": "module" package as CommonJS).
 */
export async function loadClient(gateway) {
  const response = await fetch(`http://${gateway.main}/ws-gateway.js`, { signal: AbortSignal.timeout(WAIT_MS) });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/javascript; charset=utf-8");
  const file = join(mkdtempSync(join(tmpdir(), "ws-gateway-js-")), "ws-gateway.mjs");
  writeFileSync(file, await response.text());
  return import(pathToFileURL(file).href);
}

/**
 * The detail of the next `type` event on `target` for which `accept(detail)` holds; rejects
 * after `ms`. Call it before the action that causes the event.
 */
export function nextEvent(target, type, accept = () => true, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, listener);
      reject(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    const listener = (event) => {
      if (!accept(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(type, listener);
      resolve(event.detail);
    };
    target.addEventListener(type, listener);
  });
}

/** Resolves with what `promise` resolves to, or rejects after `ms`: a guard against hangs. */
export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * A TCP proxy on an ephemeral loopback port in front of `target` ("host:port"), whose
 * connections the test cuts: with a reset on both sides, as when a phone changes networks, so
 * neither the client nor the gateway gets a close frame. While `blocked`, new connections are
 * reset at once (the client keeps retrying), so the test decides when the client is back.
 */
export class CutProxy {
  /** @type {Set<net.Socket>} */ #sockets = new Set();
  blocked = false;
  /** Connections accepted so far (refused ones included). */
  accepted = 0;

  static async start(target) {
    const proxy = new CutProxy(target);
    await new Promise((resolve, reject) => {
      proxy.server.once("error", reject);
      proxy.server.listen(0, "127.0.0.1", resolve);
    });
    proxy.address = `127.0.0.1:${proxy.server.address().port}`;
    return proxy;
  }

  constructor(target) {
    const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
    this.server = net.createServer((client) => {
      this.accepted += 1;
      if (this.blocked) {
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(port, host);
      for (const [from, to] of [[client, upstream], [upstream, client]]) {
        this.#sockets.add(from);
        from.pipe(to);
        // A reset on one side is passed on as a reset, never as a clean close.
        from.on("error", () => to.resetAndDestroy());
        from.on("close", () => this.#sockets.delete(from));
      }
    });
  }

  /** Resets every connection through the proxy, both ways. */
  cut() {
    for (const socket of this.#sockets) socket.resetAndDestroy();
    this.#sockets.clear();
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/**
 * A WebSocket class that records what each socket made from it sends: `sent[i]` is the i-th
 * connection's frames, as strings.
 */
export function recordingWebSocket() {
  const sent = [];
  const Recording = class extends WebSocket {
    constructor(...args) {
      super(...args);
      const mine = [];
      sent.push(mine);
      const send = this.send.bind(this);
      this.send = (data) => {
        mine.push(String(data));
        send(data);
      };
    }
  };
  return { Recording, sent };
}
