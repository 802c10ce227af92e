"""Medians per (measure, server) of bench/compare.sh's JSON lines, as a Markdown table."""
import json
import statistics
import sys
from collections import defaultdict

MEASURES = [
    ("conns10k", "rss_per_conn_bytes", "RSS per idle subscribed connection, 10k (bytes)", "lower"),
    ("conns10k", "conns_per_s", "connections/s, 10k at concurrency 200", "higher"),
    ("conns10k", "server_cpu_per_setup_us", "server CPU per connection set-up (µs)", "lower"),
    ("conns10k", "client_cpu_per_setup_us", "load generator CPU per set-up (µs)", "lower"),
    ("conns10k", "close_clean_s", "closing 10k connections: time until state is clean (s)", "lower"),
    ("conns10k", "rss_after_close_kib", "RSS after the 10k connections left (KiB)", "lower"),
    ("conns10k", "rss_before_kib", "RSS of the fresh server before connecting (KiB)", "lower"),
    ("fanout10k", "deliveries_per_s", "fan-out 10k × 50 flat out: deliveries/s", "higher"),
    ("fanout10k", "server_cpu_per_delivery_us", "server CPU per delivery (µs)", "lower"),
    ("fanout10k", "client_cpu_per_delivery_us", "load generator CPU per delivery (µs)", "lower"),
    ("fanout10k", "lost", "fan-out 10k × 50: lost deliveries", "lower"),
    ("latency1k", "latency_p50_ms", "latency p50, 1k subscribers at 20 pushes/s (ms)", "lower"),
    ("latency1k", "latency_p99_ms", "latency p99, 1k subscribers at 20 pushes/s (ms)", "lower"),
    ("latency1k", "server_cpu_per_delivery_us", "1k at 20/s: server CPU per delivery (µs)", "lower"),
    ("latency1k", "client_cpu_per_delivery_us", "1k at 20/s: load generator CPU per delivery (µs)", "lower"),
    ("latency10k", "latency_p50_ms", "latency p50, 10k subscribers at 20 pushes/s (ms)", "lower"),
    ("latency10k", "latency_p99_ms", "latency p99, 10k subscribers at 20 pushes/s (ms)", "lower"),
    ("latency10k", "push_s", "10k at 20/s: seconds to send the 40 pushes (2.0 = on schedule)", "lower"),
    ("push50", "requests_per_s", "push requests/s, 50 keep-alive connections", "higher"),
    ("push50", "server_cpu_per_request_us", "server CPU per push request (µs)", "lower"),
    ("push50", "client_cpu_per_request_us", "load generator CPU per push request (µs)", "lower"),
]

values = defaultdict(list)
with open(sys.argv[1]) as results:
    for line in results:
        row = json.loads(line)
        for label, key, _, _ in MEASURES:
            if row["label"] == label and key in row:
                values[(label, key, row["target"])].append(float(row[key]))

runs = max((len(v) for v in values.values()), default=0)
print(f"| measure (median of {runs} runs) | ws-gateway | nginx+Nchan | ratio (gateway/Nchan) |")
print("|---|---|---|---|")
for label, key, title, better in MEASURES:
    gw, nc = values.get((label, key, "gateway")), values.get((label, key, "nchan"))
    if not gw or not nc:
        continue
    g, n = statistics.median(gw), statistics.median(nc)
    ratio = f"{g / n:.2f}× ({better} is better)" if n else "—"
    fmt = (lambda v: f"{v:,.0f}") if max(g, n) >= 100 else (lambda v: f"{v:,.2f}")
    print(f"| {title} | {fmt(g)} | {fmt(n)} | {ratio} |")
