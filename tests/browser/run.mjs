// The demo page and the dashboard in a real browser (Debian's chromium, headless), against the
// real binary on ephemeral ports. Run by tests/browser.rs (so by `./test.sh`), or by hand:
//   node tests/browser/run.mjs target/debug/ws-gateway
// Screenshots go to target/screenshots/. Every wait has a deadline; the binary is stopped at
// the end whatever happened.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

import { Gateway } from "./gateway.mjs";
import { dashboardTests } from "./dashboard.mjs";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const BINARY = process.argv[2] || process.env.WS_GATEWAY_BIN || join(ROOT, "target/debug/ws-gateway");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const SCREENSHOTS = process.env.SCREENSHOT_DIR || join(ROOT, "target/screenshots");
// No sandbox (the tests may run as root); nothing in the background that would try to reach
// the network, which is closed on the test machines.
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const WAIT_MS = 10_000;   // the longest any single step may take
const MEMBER = 123456;
const TOKEN = "654321";

// The whole run must stay well under a minute; past this, stop everything and fail.
const overall = setTimeout(async () => {
  console.error("browser tests: over 50 s, giving up");
  await state.gateway?.stop(1000);
  process.exit(1);
}, 50_000);
overall.unref();

const state = { gateway: null, browser: null, page: null };

before(async () => {
  assert.ok(existsSync(BINARY), `no gateway binary at ${BINARY}`);
  assert.ok(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: run ./test.sh, it installs chromium`);
  mkdirSync(SCREENSHOTS, { recursive: true });
  state.gateway = await Gateway.start(BINARY, `
[auth]
kind = "static"
[auth.tokens]
${MEMBER} = "${TOKEN}"
`);
  state.browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const context = await state.browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: "light" });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: `http://${state.gateway.main}` });
  context.setDefaultTimeout(WAIT_MS);
  state.context = context;
  state.page = await context.newPage();
  state.page.on("pageerror", (e) => { state.pageErrors = [...(state.pageErrors || []), String(e)]; });
});

after(async () => {
  await state.browser?.close();
  await state.gateway?.stop();
  if (process.exitCode) console.error("gateway log:\n" + (state.gateway?.log.join("\n") ?? ""));
});

/** The first log row of the given kind whose text is `text`, once it appears. */
async function logRow(page, kind, text) {
  const row = page.locator(`#log tr[data-kind="${kind}"]`).filter({ has: page.locator("td.text", { hasText: text }) });
  await row.first().waitFor();
  return row.first();
}

async function subscribe(page, apps, expected) {
  await page.getByLabel("Apps (comma-separated)").fill(apps);
  await page.getByRole("button", { name: "Subscribe", exact: true }).click();
  for (const [app, outcome] of Object.entries(expected)) {
    await page.locator(`#subscriptions li[data-app="${app}"][data-state="${outcome}"]`).waitFor();
  }
}

test("demo page: an anonymous client subscribes and sees a push arrive", async () => {
  const { page, gateway } = state;
  await page.goto(`http://${gateway.main}/`);
  assert.equal(await page.getByLabel("Gateway URL").inputValue(), `ws://${gateway.main}/`);
  await page.getByRole("button", { name: "Connect", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "connected · anonymous" }).waitFor();
  await logRow(page, "reply", "200 hello stranger");

  await subscribe(page, "match, chat", { match: "success", chat: "success" });
  // Anonymous clients may not join the private app, and the page says so.
  await subscribe(page, "im", { im: "forbidden" });
  await logRow(page, "reply", "403 subscribe im forbidden");

  assert.equal(await gateway.push("match", -1, '{"hello":"browser"}'), 202);
  const row = await logRow(page, "push", '{"hello":"browser"}');
  assert.equal(await row.locator("td.app").textContent(), "match");
  assert.equal(await row.locator("td.member").textContent(), "-1");
  await page.screenshot({ path: join(SCREENSHOTS, "demo-anonymous.png"), fullPage: true });
});

test("demo page: a member joins the private app and receives only its own pushes", async () => {
  const { page, gateway } = state;
  await page.emulateMedia({ colorScheme: "dark" });
  await page.getByLabel("Member", { exact: true }).check();
  await page.getByLabel("Member id").fill(String(MEMBER));
  await page.getByLabel("Token").fill(TOKEN);
  await page.locator("#connect").click();   // "Reconnect" now
  await page.getByRole("status").filter({ hasText: `connected · member ${MEMBER}` }).waitFor();
  // The anonymous connection's close is logged with its meaning.
  await logRow(page, "close", "1000");
  await logRow(page, "reply", `200 hello ${MEMBER}`);

  await subscribe(page, "im", { im: "success" });
  assert.equal(await page.getByLabel("Recipient member_id").inputValue(), String(MEMBER));

  // Per connection frames keep the gateway's order: once the second push is on the page, the
  // first (for another member) would be there too had it been delivered.
  assert.equal(await gateway.push("im", 777, "not for you"), 202);
  assert.equal(await gateway.push("im", MEMBER, `hi ${MEMBER}`), 202);
  const row = await logRow(page, "push", `hi ${MEMBER}`);
  assert.equal(await row.locator("td.member").textContent(), String(MEMBER));
  assert.equal(await page.locator("#log td.text", { hasText: "not for you" }).count(), 0);

  // The page's own push form.
  await page.getByLabel("Text", { exact: true }).fill("from the form");
  await page.getByRole("button", { name: "Send push" }).click();
  await page.locator("#push-result", { hasText: "202" }).waitFor();
  await logRow(page, "push", "from the form");
  await page.screenshot({ path: join(SCREENSHOTS, "demo-member.png"), fullPage: true });
});

test("demo page: unsubscribe, and the gateway's own unsubscribe notice, update the subscriptions", async () => {
  const { page, gateway } = state;
  await subscribe(page, "match", { match: "success" });
  await page.getByLabel("Apps (comma-separated)").fill("match");
  await page.getByRole("button", { name: "Unsubscribe" }).click();
  await logRow(page, "reply", "200 unsubscribe match success");
  await page.locator('#subscriptions li[data-app="match"]').waitFor({ state: "detached" });
  // The match push is accepted first: had it been delivered, it would be on the page first.
  assert.equal(await gateway.push("match", -1, "after the unsubscribe"), 202);
  assert.equal(await gateway.push("im", MEMBER, "still subscribed"), 202);
  await logRow(page, "push", "still subscribed");
  assert.equal(await page.locator("#log td.text", { hasText: "after the unsubscribe" }).count(), 0);
  // Unsubscribing what is not subscribed is the gateway's 404, shown in the log.
  await page.getByRole("button", { name: "Unsubscribe" }).click();
  await logRow(page, "reply", "404 unsubscribe match not subscribed");

  // A backend takes the member out of im: the page drops it, logs the notice, stays connected.
  const answer = await gateway.post("/disconnect", { member_id: MEMBER, app: "im" });
  assert.deepEqual(answer, { status: 200, body: '{"connections":1}' });
  await logRow(page, "reply", "410 unsubscribe im by server");
  await page.locator('#subscriptions li[data-app="im"]').waitFor({ state: "detached" });
  await page.getByRole("status").filter({ hasText: `connected · member ${MEMBER}` }).waitFor();
  await page.screenshot({ path: join(SCREENSHOTS, "demo-unsubscribe.png"), fullPage: true });
  // Back in im for what follows (the curl command and the dashboard expect it).
  await subscribe(page, "im", { im: "success" });
});

test("demo page: the copied curl command is a working push for the chosen app and member", async () => {
  const { page } = state;
  await page.getByLabel("Text", { exact: true }).fill(`{"via":"curl's copy"}`);
  await page.getByRole("button", { name: "Copy curl command" }).click();
  await page.getByRole("button", { name: "Copied ✓" }).waitFor();
  const command = await page.evaluate(() => navigator.clipboard.readText());
  assert.match(command, /^curl -i -X POST 'http:\/\/127\.0\.0\.1:\d+\/push'/);
  assert.match(command, new RegExp(`"app":"im","member_id":${MEMBER}`));
  assert.equal(command, await page.locator("#curl").textContent());
  // Run it as a person would paste it into a shell.
  const { stdout } = await promisify(execFile)("bash", ["-c", command], { timeout: WAIT_MS });
  assert.match(stdout, /^HTTP\/1\.1 202 Accepted/);
  await logRow(page, "push", `{"via":"curl's copy"}`);

  // For gateways with push keys the command carries the Bearer header.
  await page.getByLabel(/^Push key/).fill("a-long-random-push-key");
  await page.locator("#curl", { hasText: "-H 'Authorization: Bearer a-long-random-push-key'" }).waitFor();
  await page.getByLabel(/^Push key/).fill("");

  // The same page on a phone: one column, nothing cut off sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SCREENSHOTS, "demo-narrow.png") });
  await page.setViewportSize({ width: 1280, height: 860 });
});

test("demo page: the gateway restarts, the page reconnects by itself and subscribes again", async () => {
  const { page } = state;
  await state.gateway.stop();
  await logRow(page, "close", "1001");
  await page.getByRole("status").filter({ hasText: "reconnecting in" }).waitFor();
  await page.locator('#subscriptions li[data-app="im"][data-state="pending"]').waitFor();
  state.gateway = await state.gateway.restart();
  await page.getByRole("status").filter({ hasText: `connected · member ${MEMBER}` }).waitFor();
  await page.locator('#subscriptions li[data-app="im"][data-state="success"]').waitFor();
  assert.equal(await state.gateway.push("im", MEMBER, "after the restart"), 202);
  await logRow(page, "push", "after the restart");
  await page.screenshot({ path: join(SCREENSHOTS, "demo-reconnected.png"), fullPage: true });
});

dashboardTests(state);
