#!/usr/bin/env python3
"""A scrape target for deploykit's Prometheus tests: serves /metrics in the Prometheus text
format on 127.0.0.1:<port> (first argument) with series whose rates are exact functions of
real time, so PromQL results are predictable (see deploykit-testing/tests/prometheus.rs).

Two revisions of service "web". Each series carries `revision` ("good" / "bad") and
`revision_id` (a valid deploykit RevisionId, for queries rendered with `{{revision}}`):

  deploykit_test_requests_total{status="200"}   good: +10/s       bad: +5/s
  deploykit_test_requests_total{status="500"}   good: +0/s (0)    bad: +5/s
    => sum(rate(...{revision="good"}[10s])) ~= 10, error ratio good = 0, bad = 0.5

  deploykit_test_latency_seconds (histogram, 10 observations/s per revision)
    good: every observation in the bucket (0.1, 0.25]  => histogram_quantile(0.99) = 0.2485
    bad:  every observation in the bucket (1.0, 1.5]   => histogram_quantile(0.99) = 1.495
    (histogram_quantile interpolates linearly inside the bucket: lower + 0.99 * width)

More revisions can be registered at run time, e.g. by the `alerting` example:
`POST /revisions?id=<revision id>&behaviour=good|bad` serves the same series for that
revision (labels revision="<id>", revision_id="<id>"), counting from the moment it is
registered.
"""

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

START = time.monotonic()
BUCKETS = ["0.05", "0.1", "0.25", "0.5", "1", "1.5", "2.5", "+Inf"]
# revision -> (revision_id, 200s per second, 500s per second, bucket index of every observation)
REVISIONS = {
    "good": ("600d600d600d600d", 10.0, 0.0, BUCKETS.index("0.25")),
    "bad": ("bad0bad0bad0bad0", 5.0, 5.0, BUCKETS.index("1.5")),
}
OBSERVATIONS_PER_SECOND = 10.0
# Each observation's value: the middle of its bucket (only _sum depends on it).
OBSERVED_VALUE = {"good": 0.2, "bad": 1.25}


# Registered at run time: revision id -> (behaviour, registration time).
EXTRA = {}


def render() -> str:
    now = time.monotonic()
    t = now - START
    out = [
        "# HELP deploykit_test_requests_total Requests served.",
        "# TYPE deploykit_test_requests_total counter",
    ]
    for rev, (rev_id, ok, err, _) in REVISIONS.items():
        labels = f'service="web",revision="{rev}",revision_id="{rev_id}"'
        out.append(f'deploykit_test_requests_total{{{labels},status="200"}} {ok * t:.6f}')
        out.append(f'deploykit_test_requests_total{{{labels},status="500"}} {err * t:.6f}')
    for rev_id, (behaviour, since) in list(EXTRA.items()):
        _, ok, err, _ = REVISIONS[behaviour]
        labels = f'service="web",revision="{rev_id}",revision_id="{rev_id}"'
        out.append(f'deploykit_test_requests_total{{{labels},status="200"}} {ok * (now - since):.6f}')
        out.append(f'deploykit_test_requests_total{{{labels},status="500"}} {err * (now - since):.6f}')
    out += [
        "# HELP deploykit_test_latency_seconds Request latency.",
        "# TYPE deploykit_test_latency_seconds histogram",
    ]
    for rev, (rev_id, _, _, bucket) in REVISIONS.items():
        labels = f'service="web",revision="{rev}",revision_id="{rev_id}"'
        count = OBSERVATIONS_PER_SECOND * t
        for i, le in enumerate(BUCKETS):
            n = count if i >= bucket else 0.0
            out.append(f'deploykit_test_latency_seconds_bucket{{{labels},le="{le}"}} {n:.6f}')
        out.append(f"deploykit_test_latency_seconds_sum{{{labels}}} {count * OBSERVED_VALUE[rev]:.6f}")
        out.append(f"deploykit_test_latency_seconds_count{{{labels}}} {count:.6f}")
    return "\n".join(out) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        from urllib.parse import parse_qs, urlparse

        url = urlparse(self.path)
        query = parse_qs(url.query)
        rev_id = query.get("id", [""])[0]
        behaviour = query.get("behaviour", [""])[0]
        if url.path != "/revisions" or not rev_id.isalnum() or behaviour not in REVISIONS:
            self.send_error(400)
            return
        EXTRA.setdefault(rev_id, (behaviour, time.monotonic()))
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet: Prometheus scrapes every second
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
