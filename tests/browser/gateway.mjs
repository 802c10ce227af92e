// The real ws-gateway binary as a child process on ephemeral loopback ports, the way
// tests/common/binary.rs runs it: the bound addresses are read from its start-up log.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

// tracing colours its output only on a terminal, but strip escapes anyway.
const ANSI = /\x1b\[[0-9;]*m/g;

export class Gateway {
  /**
   * Starts `binary` with `configToml` and resolves once both listeners are bound. `listen`: the
   * main listener's address (an ephemeral loopback port unless given, e.g. to restart on the
   * same port).
   */
  static async start(binary, configToml, { deadlineMs = 10_000, listen = "127.0.0.1:0" } = {}) {
    const dir = mkdtempSync(join(tmpdir(), "ws-gateway-browser-"));
    const config = join(dir, "gateway.toml");
    writeFileSync(config, configToml);
    const child = spawn(
      binary,
      ["--config", config, "--listen", listen, "--stat-listen", "127.0.0.1:0"],
      { env: { ...process.env, RUST_LOG: "info" }, stdio: ["ignore", "ignore", "pipe"] },
    );
    const gateway = new Gateway(child, dir, { binary, configToml });
    await gateway.#addresses(deadlineMs);
    return gateway;
  }

  constructor(child, dir, started = {}) {
    this.child = child;
    this.dir = dir;
    this.started = started;
    this.log = [];
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    this.lines = createInterface({ input: child.stderr });
    this.lines.on("line", (line) => this.log.push(line.replace(ANSI, "")));
  }

  #addresses(deadlineMs) {
    return new Promise((resolve, reject) => {
      const found = {};
      const check = () => {
        for (const line of this.log) {
          const main = line.match(/websocket and push listener on (\S+)/);
          const stat = line.match(/stat listener on (\S+)/);
          if (main) found.main = main[1];
          if (stat) found.stat = stat[1];
        }
        if (found.main && found.stat) {
          this.main = found.main;
          this.stat = found.stat;
          finish();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`no listener addresses within ${deadlineMs} ms; log:\n${this.log.join("\n")}`));
      }, deadlineMs);
      const onExit = ({ code, signal }) => {
        finish();
        reject(new Error(`the gateway exited (${code ?? signal}) before listening; log:\n${this.log.join("\n")}`));
      };
      const finish = () => {
        clearTimeout(timer);
        this.lines.off("line", check);
      };
      this.lines.on("line", check);
      this.exited.then(onExit);
    });
  }

  /** POST /push; resolves to the status. */
  async push(app, memberId, text, headers = {}) {
    const response = await fetch(`http://${this.main}/push`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify({ app, member_id: memberId, text }),
      signal: AbortSignal.timeout(5_000),
    });
    await response.arrayBuffer();
    return response.status;
  }

  /** POSTs `body` as JSON to `path` on the main listener; resolves to {status, body}. */
  async post(path, body) {
    const response = await fetch(`http://${this.main}${path}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5_000),
    });
    return { status: response.status, body: await response.text() };
  }

  /** Sends a signal (`"SIGSTOP"`, `"SIGCONT"`, …) and returns at once. */
  signal(name) {
    this.child.kill(name);
  }

  /** SIGKILL, then resolves once it has exited: its sockets are gone, nobody was told. */
  async kill() {
    this.child.kill("SIGKILL");
    await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The same binary and configuration started again, its main listener on the same address. */
  restart() {
    return Gateway.start(this.started.binary, this.started.configToml, { listen: this.main });
  }

  async fetchStat(path) {
    const response = await fetch(`http://${this.stat}${path}`, { signal: AbortSignal.timeout(5_000) });
    return { status: response.status, body: await response.text() };
  }

  /** SIGTERM, then SIGKILL if it has not exited within the deadline; removes the config. */
  async stop(deadlineMs = 5_000) {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), deadlineMs);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
