//! The markdown report: the tables that go into README's performance section, and the targets checked against them.

use crate::proxy::ProxyFigures;
use crate::{Day, Outcome, RunArgs};
use std::fmt::Write as _;
use std::time::Duration;

pub fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn secs(s: f64) -> String {
    dur(Duration::from_secs_f64(s.max(0.0)))
}

pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.1}×", b / a)
    } else {
        "—".into()
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model})")
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A target and whether the run held it.
struct Target {
    what: String,
    measured: String,
    held: Option<bool>,
}

pub fn render(
    args: &RunArgs,
    outcomes: &[Outcome],
    week: Option<&Result<(usize, Vec<Day>), String>>,
    proxy: Option<&Result<ProxyFigures, String>>,
    load_start: &str,
) -> String {
    let mut s = String::new();
    let mut targets: Vec<Target> = Vec::new();
    let _ = writeln!(
        s,
        "Measured by `scripts/bench{}` on {}, revision {}, {}. Load average {} at the start and {} at the end \
(other work shares the machine). Every upstream answer is delayed by {}; `max_concurrent_polls = {}` \
(the baseline runs as many threads).\n",
        if args.smoke { " --smoke" } else { "" },
        machine(),
        revision(),
        chrono::Utc::now().format("%Y-%m-%d"),
        load_start,
        load_average(),
        dur(args.latency),
        args.concurrency,
    );

    let history = format!("{} h", args.history.as_secs_f64() / 3600.0);
    if !outcomes.is_empty() {
        let _ = writeln!(s, "#### creditwatch\n");
        let _ = writeln!(
            s,
            "| scenario | series | poll round (limit) | CPU per poll | peak RSS | `/metrics` | gzip | p50 / p99, 4 scrapers | store after {history} | status page |"
        );
        let _ = writeln!(s, "|---|--:|---|--:|--:|---|---|---|---|---|");
        for o in outcomes {
            match &o.creditwatch {
                Ok(f) => {
                    let round = f
                        .round
                        .map(|r| {
                            format!(
                                "{} ({}, {:.2}×)",
                                dur(r),
                                dur(o.limit()),
                                r.as_secs_f64() / o.limit().as_secs_f64()
                            )
                        })
                        .unwrap_or_default();
                    let scrape = |x: Option<crate::measure::Scrape>| {
                        x.map(|x| format!("{}, {}", dur(x.elapsed), bytes(x.bytes as u64)))
                            .unwrap_or_default()
                    };
                    let store = f
                        .store
                        .map(|st| {
                            format!(
                                "{} ({} samples)",
                                bytes(st.bytes),
                                thousands(st.samples as u64)
                            )
                        })
                        .unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        o.label,
                        thousands(f.series as u64),
                        round,
                        f.usage.cpu_per_poll().map(secs).unwrap_or_default(),
                        bytes(f.peak_rss),
                        scrape(f.plain),
                        scrape(f.gzip),
                        p50_p99(&f.concurrent),
                        store,
                        scrape(f.status_page)
                    );
                    if let Some(r) = f.round {
                        let x = r.as_secs_f64() / o.limit().as_secs_f64();
                        targets.push(Target {
                            what: format!(
                                "{}: poll round within 1.2× the latency-bound limit",
                                o.label
                            ),
                            measured: format!("{} vs {} ({x:.2}×)", dur(r), dur(o.limit())),
                            held: Some(x <= 1.2),
                        });
                    }
                    if let Some(g) = f.gzip {
                        targets.push(Target {
                            what: format!("{}: gzip when asked", o.label),
                            measured: if g.gzip {
                                format!(
                                    "gzip, {} for {}",
                                    bytes(g.bytes as u64),
                                    bytes(f.plain.map(|p| p.bytes).unwrap_or(0) as u64)
                                )
                            } else {
                                "not compressed".into()
                            },
                            held: Some(g.gzip),
                        });
                    }
                    if o.workload.accounts >= 10_000
                        && let Some(p) = f.plain
                    {
                        targets.push(Target {
                            what: format!("{}: `/metrics` rendered in under 100 ms", o.label),
                            measured: dur(p.elapsed),
                            held: Some(p.elapsed < Duration::from_millis(100)),
                        });
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | failed: {} ||||||||| ",
                        o.label,
                        e.replace('\n', " ")
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "\nThe limit is accounts × latency ÷ concurrency, in whole waves of {} polls. CPU per poll is the \
process's user + system time (/proc/PID/stat) over at least two poll intervals with nothing else \
running, divided by the polls the upstream answered meanwhile. Peak RSS is VmHWM at the end, after \
the scrapers. `/metrics` is the median of sequential scrapes (time, size), and so is the status page (its first \
page: 100 pools and 100 accounts), loaded after the peak RSS was read. The store was filled \
beforehand by simulating {history} of 5-minute polls through the daemon's own ingest and hourly maintenance.\n",
            args.concurrency,
        );
    }

    if outcomes.iter().any(|o| o.baseline.is_some()) {
        let _ = writeln!(
            s,
            "#### Against the Python baseline (same upstream, same run)\n"
        );
        let _ = writeln!(
            s,
            "| scenario | CPU per poll: creditwatch / baseline | peak RSS | `/metrics` | p50 / p99, 4 scrapers | poll round | series |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for o in outcomes {
            let (Ok(c), Some(b)) = (&o.creditwatch, &o.baseline) else {
                continue;
            };
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | baseline failed: {} ||||||",
                        o.label,
                        e.replace('\n', " ")
                    );
                    continue;
                }
            };
            let cc = c.usage.cpu_per_poll().unwrap_or(0.0);
            let bc = b.usage.cpu_per_poll().unwrap_or(0.0);
            let cr = c.plain.map(|p| p.elapsed.as_secs_f64()).unwrap_or(0.0);
            let br = b.plain.map(|p| p.elapsed.as_secs_f64()).unwrap_or(0.0);
            let _ = writeln!(
                s,
                "| {} | {} / {} (**{}** less) | {} / {} (**{}** less) | {} / {} ({} faster) | {} / {} | {} / {} | {} / {} |",
                o.label,
                secs(cc),
                secs(bc),
                ratio(cc, bc),
                bytes(c.peak_rss),
                bytes(b.peak_rss),
                ratio(c.peak_rss as f64, b.peak_rss as f64),
                secs(cr),
                secs(br),
                ratio(cr, br),
                p50_p99(&c.concurrent),
                p50_p99(&b.concurrent),
                c.round.map(dur).unwrap_or_default(),
                b.round.map(dur).unwrap_or_default(),
                thousands(c.series as u64),
                thousands(b.series as u64),
            );
            targets.push(Target {
                what: format!(
                    "{}: at least 20× less CPU per poll than the baseline",
                    o.label
                ),
                measured: ratio(cc, bc),
                held: (cc > 0.0 && bc > 0.0).then(|| bc / cc >= 20.0),
            });
            targets.push(Target {
                what: format!("{}: at least 5× less memory than the baseline", o.label),
                measured: ratio(c.peak_rss as f64, b.peak_rss as f64),
                held: Some(b.peak_rss as f64 / c.peak_rss.max(1) as f64 >= 5.0),
            });
        }
        let _ = writeln!(
            s,
            "\nThe baseline (`benches/baseline/exporter.py`) polls the same URLs at the same interval \
with `requests` and exports gauges with `prometheus_client`. It keeps no history and computes no burn \
rates or forecasts, so it exports fewer series.\n"
        );
    }

    let growth: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.workload.accounts > 1 && o.creditwatch.is_ok())
        .collect();
    if growth.len() > 1 {
        let _ = writeln!(s, "#### Growth, per account\n");
        let _ = writeln!(
            s,
            "| accounts | CPU per poll | peak RSS per account | `/metrics` per account | store per account |"
        );
        let _ = writeln!(s, "|--:|--:|--:|--:|--:|");
        for o in growth {
            let f = o.creditwatch.as_ref().expect("filtered");
            let n = o.workload.accounts as f64;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                thousands(o.workload.accounts as u64),
                f.usage.cpu_per_poll().map(secs).unwrap_or_default(),
                bytes((f.peak_rss as f64 / n) as u64),
                f.plain
                    .map(|p| secs(p.elapsed.as_secs_f64() / n))
                    .unwrap_or_default(),
                f.store
                    .map(|st| bytes((st.bytes as f64 / n) as u64))
                    .unwrap_or_default(),
            );
        }
        let _ = writeln!(s);
    }

    if let Some(week) = week {
        match week {
            Ok((accounts, days)) => {
                let _ = writeln!(
                    s,
                    "#### A simulated week: {} accounts, 5-minute polls\n",
                    thousands(*accounts as u64)
                );
                let _ = writeln!(
                    s,
                    "| day | samples | store | RSS | `/metrics` render | exposition |"
                );
                let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|");
                for d in days {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {:.1} ms | {} |",
                        d.day,
                        thousands(d.samples as u64),
                        bytes(d.store_bytes),
                        bytes(d.rss),
                        d.render_ms,
                        bytes(d.exposition_bytes as u64)
                    );
                }
                let _ = writeln!(
                    s,
                    "\nOne process runs the daemon's ingest, store, hourly compaction and pruning, state and \
`/metrics` rendering under a manual clock; the row is taken at the end of each simulated day.\n"
                );
                // Flat once the retention (2 days) has filled: compare every later day to the
                // first such day.
                let settled: Vec<&Day> = days.iter().filter(|d| d.day >= 3).collect();
                if let (Some(first), Some(last)) = (settled.first(), settled.last())
                    && settled.len() > 1
                {
                    let grow = |a: u64, b: u64| (b as f64 / a.max(1) as f64 - 1.0) * 100.0;
                    let store_grow = settled
                        .iter()
                        .map(|d| grow(first.store_bytes, d.store_bytes))
                        .fold(f64::MIN, f64::max);
                    let rss_grow = settled
                        .iter()
                        .map(|d| grow(first.rss, d.rss))
                        .fold(f64::MIN, f64::max);
                    targets.push(Target {
                        what: "store size flat over a simulated week".into(),
                        measured: format!(
                            "{} on day {}, {} on day {} (at most {:+.1}%)",
                            bytes(first.store_bytes),
                            first.day,
                            bytes(last.store_bytes),
                            last.day,
                            store_grow
                        ),
                        held: Some(store_grow <= 10.0),
                    });
                    targets.push(Target {
                        what: "memory flat over a simulated week".into(),
                        measured: format!(
                            "{} on day {}, {} on day {} (at most {:+.1}%)",
                            bytes(first.rss),
                            first.day,
                            bytes(last.rss),
                            last.day,
                            rss_grow
                        ),
                        held: Some(rss_grow <= 10.0),
                    });
                }
            }
            Err(e) => {
                let _ = writeln!(s, "The simulated week failed: {e}\n");
            }
        }
    }

    if let Some(proxy) = proxy {
        let _ = writeln!(s, "#### (c) The fluxrouter proxy under `wrk`\n");
        match proxy {
            Ok(p) => {
                let _ = writeln!(
                    s,
                    "| path | wrk threads, connections | p50 | p99 | requests/s |"
                );
                let _ = writeln!(s, "|---|--:|--:|--:|--:|");
                for l in &p.levels {
                    for (name, w) in [
                        ("direct to the upstream", &l.direct),
                        ("through the proxy", &l.proxied),
                    ] {
                        let _ = writeln!(
                            s,
                            "| {name} | {}, {} | {} | {} | {:.0} |",
                            l.threads,
                            l.connections,
                            dur(w.p50),
                            dur(w.p99),
                            w.rps
                        );
                    }
                    let _ = writeln!(
                        s,
                        "| added by the proxy | {}, {} | +{} | +{} | {:+.0}% |",
                        l.threads,
                        l.connections,
                        dur(l.proxied.p50.saturating_sub(l.direct.p50)),
                        dur(l.proxied.p99.saturating_sub(l.direct.p99)),
                        (l.proxied.rps / l.direct.rps - 1.0) * 100.0
                    );
                }
                let _ = writeln!(
                    s,
                    "\n`wrk -t1 -c1` and `wrk -t2 -c16`, {} each, a POST of a small chat request. The upstream \
answers at once with a priced response, so the difference is the proxy's own cost: forwarding, reading \
`X-Flux-Cost-Usd` and committing it to the ledger before the response is released. The daemon used {} of CPU \
per proxied request; peak RSS {}. `wrk`, the upstream and the proxy share the same 2 cores.\n",
                    humantime::format_duration(args.wrk_for),
                    secs(p.cpu_per_request),
                    bytes(p.peak_rss)
                );
            }
            Err(e) => {
                let _ = writeln!(s, "Failed: {e}\n");
            }
        }
    }

    let _ = writeln!(s, "#### Targets\n");
    let _ = writeln!(s, "| target | measured | held |");
    let _ = writeln!(s, "|---|---|---|");
    for t in &targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t.what,
            t.measured,
            match t.held {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    }
    s
}

fn p50_p99(sorted: &[Duration]) -> String {
    match (
        crate::measure::quantile(sorted, 0.5),
        crate::measure::quantile(sorted, 0.99),
    ) {
        (Some(a), Some(b)) => format!("{} / {} ({} scrapes)", dur(a), dur(b), sorted.len()),
        _ => String::new(),
    }
}
