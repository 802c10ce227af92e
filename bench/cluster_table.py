"""bench/cluster.sh's results: one readable line per measure, and a table of medians.

    python3 bench/cluster_table.py line LABEL JSON FILE   # prints LABEL's line, appends JSON to FILE
    python3 bench/cluster_table.py table FILE             # medians per label over the rounds

LABEL is SCENARIO/BROKER/NODES (e.g. fanout/redis/3); JSON is one ws-gateway-bench result.
"""
import json
import statistics
import sys
from collections import defaultdict


def num(v, digits=2):
    if v is None:
        return "?"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1):
        return f"{v:,.0f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.{digits}f}"


def per_node(row, key):
    values = row.get(key)
    return "/".join(num(v) for v in values) if values else "?"


def cpu(row, unit):
    text = f"server {num(row.get(f'server_cpu_per_{unit}_us'))} µs"
    if row.get(f"node_cpu_per_{unit}_us") and len(row[f"node_cpu_per_{unit}_us"]) > 1:
        text += f" (nodes {per_node(row, f'node_cpu_per_{unit}_us')})"
    if f"broker_cpu_per_{unit}_us" in row:
        text += f", broker {num(row[f'broker_cpu_per_{unit}_us'])}"
    return text + f", client {num(row.get(f'client_cpu_per_{unit}_us'))}"


def line(label, row):
    scenario, broker, nodes = label.split("/")
    where = f"{scenario:<6} {broker:<5} {nodes} node{'s' if nodes != '1' else ' '}"
    if scenario in ("hop", "hop1"):
        return (f"{where}: latency p50 {num(row['latency_p50_ms'])} / p99 {num(row['latency_p99_ms'])}"
                f" / max {num(row['latency_max_ms'])} ms, lost {row['lost']}"
                f" | CPU per delivery: {cpu(row, 'delivery')}")
    if scenario in ("fanout", "fanrate"):
        return (f"{where}: {num(row['deliveries_per_s'])} deliveries/s, pushes sent in {num(row['push_s'])} s,"
                f" p50 {num(row['latency_p50_ms'])} / p99 {num(row['latency_p99_ms'])} ms,"
                f" lost {row['lost']}, reordered {row['reordered']}"
                f" | CPU per delivery: {cpu(row, 'delivery')}")
    if scenario == "push":
        return (f"{where}: {num(row['requests_per_s'])} pushes/s, refused {row['refused']}"
                f" | CPU per push: {cpu(row, 'request')}")
    if scenario == "scale":
        return (f"{where}: {row['subscribers']:,} subscribers in {row.get('client_procs', 1)} client processes,"
                f" last delivery {num(row['latency_max_ms'])} ms after the push (p50 {num(row['latency_p50_ms'])}),"
                f" lost {row['lost']} | RSS per connection per node {per_node(row, 'node_rss_per_conn_bytes')} B"
                f" ({per_node(row, 'node_rss_per_conn_after_bytes')} after the push)"
                f" | CPU per delivery: {cpu(row, 'delivery')}")
    return f"{label}: {json.dumps(row)}"


COLUMNS = {
    "hop": [("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"), ("latency_max_ms", "max ms"),
            ("lost", "lost"), ("server_cpu_per_delivery_us", "server µs/delivery"),
            ("broker_cpu_per_delivery_us", "broker µs/delivery"),
            ("client_cpu_per_delivery_us", "client µs/delivery")],
    "hop1": [("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"), ("latency_max_ms", "max ms"),
             ("lost", "lost")],
    "fanout": [("deliveries_per_s", "deliveries/s"), ("push_s", "s to send the pushes"), ("server_cpu_per_delivery_us", "server µs/delivery"),
               ("broker_cpu_per_delivery_us", "broker µs/delivery"),
               ("client_cpu_per_delivery_us", "client µs/delivery"), ("latency_p99_ms", "p99 ms"),
               ("lost", "lost"), ("reordered", "reordered")],
    "fanrate": [("server_cpu_per_delivery_us", "server µs/delivery"),
                ("broker_cpu_per_delivery_us", "broker µs/delivery"),
                ("client_cpu_per_delivery_us", "client µs/delivery"), ("latency_p50_ms", "p50 ms"),
                ("latency_p99_ms", "p99 ms"), ("push_s", "s to send (4.75 = on time)"), ("lost", "lost")],
    "push": [("requests_per_s", "pushes/s"), ("refused", "refused"),
             ("server_cpu_per_request_us", "server µs/push"), ("broker_cpu_per_request_us", "broker µs/push"),
             ("client_cpu_per_request_us", "client µs/push")],
    "scale": [("subscribers", "subscribers"), ("latency_max_ms", "push → last delivery ms"),
              ("latency_p50_ms", "p50 ms"), ("lost", "lost"), ("node_rss_per_conn_bytes", "RSS/conn per node B"),
              ("node_rss_per_conn_after_bytes", "RSS/conn per node after the push B"),
              ("server_cpu_per_delivery_us", "server µs/delivery")],
}


def median(values):
    if not values:
        return None
    if isinstance(values[0], list):  # per node: the median of each node
        return [statistics.median(v) for v in zip(*values)]
    return statistics.median(values)


def table(path):
    rows = defaultdict(list)
    with open(path) as results:
        for text in results:
            row = json.loads(text)
            rows[row["label"]].append(row)
    for scenario, columns in COLUMNS.items():
        labels = [label for label in rows if label.startswith(scenario + "/")]
        if not labels:
            continue
        print(f"\n{scenario} (median of the runs; runs in parentheses)")
        print("| broker, nodes | " + " | ".join(title for _, title in columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for label in sorted(labels):
            cells = []
            for key, _ in columns:
                values = [row[key] for row in rows[label] if key in row]
                m = median(values)
                if isinstance(m, list):
                    cells.append("/".join(num(v) for v in m))
                elif m is None:
                    cells.append("—")
                elif len(values) > 1 and key not in ("lost", "reordered", "refused", "subscribers"):
                    cells.append(f"{num(m)} ({' / '.join(num(v) for v in values)})")
                else:
                    cells.append(num(m))
            _, broker, nodes = label.split("/")
            print(f"| {broker}, {nodes} | " + " | ".join(cells) + " |")


if sys.argv[1] == "line":
    label, row = sys.argv[2], json.loads(sys.argv[3])
    print(line(label, row), flush=True)
    row["label"] = label
    with open(sys.argv[4], "a") as out:
        out.write(json.dumps(row) + "\n")
elif sys.argv[1] == "table":
    table(sys.argv[2])
else:
    sys.exit(__doc__)
