#!/usr/bin/env python3
"""Server memory while one client downloads a whole list as JSON, pretty JSON and YAML.

Usage: list_rss.py PORT SERVER_PID REPORTS
Seeds REPORTS PolicyReports of about 10 KB (24 results each) into namespace "flood" of a running
server (8 HTTPS clients), then downloads the cluster-wide list with curl in each encoding while
sampling the server's VmRSS every 20 ms, and prints the size, the time and the RSS growth.
curl is a client kube-apiserver pretty-prints JSON for, as this server does.
"""
import json, ssl, http.client, threading, subprocess, time, sys, os, re
PORT = int(sys.argv[1]); PID = int(sys.argv[2]); N = int(sys.argv[3])
ctx = ssl._create_unverified_context()
def report(i):
    results = [{"policy": f"policy-{j%12}", "rule": f"rule-{j}", "result": "fail" if j % 7 == 0 else "pass",
                "message": "validation error: image tag 'latest' is not allowed. rule autogen-validate-image-tag failed at path /spec/containers/0/image/" * 1,
                "resources": [{"apiVersion": "v1", "kind": "Pod", "name": f"pod-{i}", "namespace": "flood", "uid": f"0000-{i:08d}"}],
                "scored": True, "source": "kyverno", "timestamp": {"seconds": 1700000000, "nanos": 0}} for j in range(24)]
    return json.dumps({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": f"r{i:06d}", "namespace": "flood", "labels": {"app.kubernetes.io/managed-by": "kyverno"}},
        "results": results, "summary": {"pass": 20, "fail": 4}})
def worker(k):
    c = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx)
    for i in range(k, N, 8):
        c.request("POST", "/apis/wgpolicyk8s.io/v1alpha2/namespaces/flood/policyreports", report(i), {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 201, r.status
ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
print(f"seeded {N} in {time.time()-t0:.1f}s; report bytes {len(report(1))}")
def rss():
    s = open(f"/proc/{PID}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+)", s).group(1)) // 1024
def measure(accept, extra=""):
    base = rss(); peak = base; done = False
    def sample():
        nonlocal peak
        while not done:
            peak = max(peak, rss()); time.sleep(0.02)
    th = threading.Thread(target=sample); th.start()
    t0 = time.time()
    out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{size_download}", "-H", f"Accept: {accept}",
        f"https://127.0.0.1:{PORT}/apis/wgpolicyk8s.io/v1alpha2/policyreports{extra}"], capture_output=True, text=True).stdout
    el = time.time() - t0; done = True; th.join()
    print(f"{accept}{extra}: {int(out)/1e6:.0f} MB in {el:.1f}s, RSS {base} -> peak {peak} MiB (+{peak-base})")
for a, e in [("application/json", ""), ("application/yaml", ""), ("application/json", "?pretty=true"), ("application/yaml", "")]:
    measure(a, e)
