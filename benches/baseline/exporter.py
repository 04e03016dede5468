"""The baseline: a usage exporter of the kind a team writes by hand in Python.

It polls every account's usage endpoint with `requests` (one keep-alive session, as many
threads as creditwatch's max_concurrent_polls), turns each body into gauges with the official
`prometheus_client`, and serves them with its built-in HTTP server, which gzips when asked. It
polls the benchmark's fake upstream exactly as creditwatch does: the same URLs, the same
interval, the same concurrency. It keeps no history and computes no burn rates or forecasts.

Prints "round 1 complete" on stdout once every account has been polled once.
"""

import argparse
import datetime as dt
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client import Gauge, start_http_server
from requests.adapters import HTTPAdapter

ACCOUNT = ["provider", "account"]
POOL = ["provider", "account", "pool", "key"]

UP = Gauge("usage_up", "1 if the last poll of the account succeeded.", ACCOUNT)
LAST_SUCCESS = Gauge("usage_last_success_timestamp_seconds", "Last successful poll.", ACCOUNT)
DURATION = Gauge("usage_poll_duration_seconds", "Duration of the last poll.", ACCOUNT)
REMAINING = Gauge("usage_remaining", "Left in the pool.", POOL + ["unit"])
USED = Gauge("usage_used", "Used in the current period.", POOL + ["unit"])
LIMIT = Gauge("usage_limit", "Allocation of the current period.", POOL + ["unit"])
KEY_ACTIVE = Gauge("usage_key_active", "1 if the API key is usable.", ["provider", "account", "key"])
KEY_REQUESTS = Gauge("usage_key_requests", "Requests made with the API key.", ["provider", "account", "key"])
ENDPOINT_CREDITS = Gauge("usage_endpoint_credits", "Credits by endpoint.", ["provider", "account", "endpoint"])


def period_start(anchor, today):
    """The start of the monthly billing period containing `today`, from a past anchor date."""
    y, m = today.year, today.month
    while True:
        day = min(anchor.day, [31, 29 if y % 4 == 0 else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1])
        start = dt.date(y, m, day)
        if start <= today:
            return start
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)


def fluximage(a, body):
    p, acc = "fluximage", a["name"]
    if body["plan"] not in ("pro", "agency"):
        REMAINING.labels(p, acc, "compression", "", "credits").set(body["compressor_limit"] - body["compressor_used"])
        LIMIT.labels(p, acc, "compression", "", "credits").set(body["compressor_limit"])
    USED.labels(p, acc, "compression", "", "credits").set(body["compressor_used"])
    USED.labels(p, acc, "ai", "", "credits").set(body["ia_credits_used"])
    REMAINING.labels(p, acc, "ai", "", "credits").set(body["ia_credits_remaining"])
    LIMIT.labels(p, acc, "ai", "", "credits").set(body["ia_credits_used"] + body["ia_credits_remaining"])


def imagerouter(a, body):
    p, acc = "imagerouter", a["name"]
    REMAINING.labels(p, acc, "balance", "", "usd").set(float(body["remaining_credits"]))
    USED.labels(p, acc, "balance", "", "usd").set(float(body["credit_usage"]))
    LIMIT.labels(p, acc, "balance", "", "usd").set(float(body["total_deposits"]))
    for k in body.get("usage_by_api_key") or []:
        name = k["api_key_name"] or k["api_key_id"]
        KEY_ACTIVE.labels(p, acc, name).set(1 if k["is_active"] else 0)
        KEY_REQUESTS.labels(p, acc, name).set(k["total_requests"])
        if k["spend_limit"] is not None:
            limit, spent = float(k["spend_limit"]), float(k["period_spend"] or 0)
            REMAINING.labels(p, acc, "key_spend", name, "usd").set(max(limit - spent, 0.0))
            USED.labels(p, acc, "key_spend", name, "usd").set(spent)
            LIMIT.labels(p, acc, "key_spend", name, "usd").set(limit)


def floow(a, body):
    p, acc = "floow", a["name"]
    now = dt.datetime.now(dt.timezone.utc)
    start = period_start(dt.date.fromisoformat(a["billing_anchor"]), now.date()).isoformat()
    used = sum(d["credits"] for d in body["daily"] if d["date"] >= start)
    allowance = a["monthly_allowance"]
    USED.labels(p, acc, "credits", "", "credits").set(used)
    LIMIT.labels(p, acc, "credits", "", "credits").set(allowance)
    REMAINING.labels(p, acc, "credits", "", "credits").set(max(allowance - used, 0))
    for name, e in body["summary"]["byEndpoint"].items():
        ENDPOINT_CREDITS.labels(p, acc, name).set(e["credits"])


PARSERS = {"fluximage": fluximage, "imagerouter": imagerouter, "floow": floow}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", required=True, help="JSON list of accounts")
    ap.add_argument("--listen", default="127.0.0.1:9100")
    ap.add_argument("--interval", type=float, default=300.0, help="seconds")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--key", default="bench-key")
    args = ap.parse_args()
    with open(args.accounts) as f:
        accounts = json.load(f)

    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + args.key
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=args.concurrency))

    def poll(a):
        started = time.monotonic()
        try:
            r = session.get(a["url"], timeout=15)
            r.raise_for_status()
            PARSERS[a["provider"]](a, r.json())
            UP.labels(a["provider"], a["name"]).set(1)
            LAST_SUCCESS.labels(a["provider"], a["name"]).set(time.time())
        except Exception as e:  # a failed poll must not stop the others
            UP.labels(a["provider"], a["name"]).set(0)
            print(f"poll of {a['name']} failed: {e}", file=sys.stderr)
        DURATION.labels(a["provider"], a["name"]).set(time.monotonic() - started)

    host, port = args.listen.rsplit(":", 1)
    start_http_server(int(port), addr=host)
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    rounds = 0
    while True:
        started = time.monotonic()
        list(pool.map(poll, accounts))
        rounds += 1
        if rounds == 1:
            print("round 1 complete", flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
