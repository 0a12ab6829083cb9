#!/usr/bin/env python3
"""Splits a `perf record -a` profile into the cost categories of a request (usage: perf_split.py perf.data)."""
import re, subprocess, sys, collections
out = subprocess.run(["perf", "report", "-i", sys.argv[1], "--stdio", "--no-children", "--sort", "comm,dso,sym", "-g", "none"],
                     capture_output=True, text=True).stdout
rules = [
    ("idle", lambda c, d, s: c == "swapper"),
    ("load generator (reports-bench)", lambda c, d, s: c == "reports-bench" or d == "reports-bench"),
    ("PostgreSQL", lambda c, d, s: c == "postgres"),
    ("TLS (rustls, ring)", lambda c, d, s: re.search(r"rustls|ring_core|ring::|aes_gcm|chacha|x25519|sha256|gcm_", s)),
    ("HTTP (hyper, h2, axum, tower)", lambda c, d, s: re.search(r"hyper|\bh2::|axum|tower|http::|httparse", s)),
    ("JSON parsing (serde_json de)", lambda c, d, s: re.search(r"serde_json::de|serde_json::read|Deserializ|visit_map|parse_str|skip_to_escape", s)),
    ("JSON serialisation (serde_json ser)", lambda c, d, s: re.search(r"serde_json::ser|Serializ|format_escaped_str", s)),
    ("validation, pruning, defaults (reports_core)", lambda c, d, s: re.search(r"reports_core::validation|prune|defaults", s)),
    ("store client (reports_store, tokio_postgres, deadpool)", lambda c, d, s: re.search(r"reports_store|tokio_postgres|postgres_protocol|deadpool|postgres_types", s)),
    ("allocator (mimalloc)", lambda c, d, s: re.search(r"\bmi_|_mi_|mimalloc", s)),
    ("maps and hashing (indexmap, hashbrown)", lambda c, d, s: re.search(r"indexmap|hashbrown|Hasher|hash_one|sip::", s)),
    ("async runtime (tokio)", lambda c, d, s: re.search(r"tokio::", s)),
    ("server, other", lambda c, d, s: d == "reports-server"),
    ("kernel (network, syscalls) under the server", lambda c, d, s: c.startswith("tokio") and "kernel" in d),
    ("libc under the server", lambda c, d, s: c.startswith("tokio") and "libc" in d),
]
totals = collections.Counter()
for line in out.splitlines():
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    pct, comm, dso, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
    for name, rule in rules:
        if rule(comm, dso, sym):
            totals[name] += pct
            break
    else:
        totals["other processes"] += pct
busy = sum(v for k, v in totals.items() if k != "idle")
for name, v in totals.most_common():
    print(f"| {name} | {v:.1f} % | {'' if name == 'idle' else f'{100*v/busy:.1f} %'} |")
