//! Micro-benchmarks of the per-poll and per-scrape paths: rendering `/metrics`, ingesting a reading, parsing bodies.
//!
//! `cargo bench --bench micro` measures; `cargo test --all-targets` runs each once as a test.
//! The scale benchmark (`scripts/bench`) measures the same paths end to end in the release
//! binary; these isolate them for profiling (`cargo bench --bench micro -- --profile-time 10`).

use chrono::{DateTime, Duration, TimeZone, Utc};
use creditwatch::config::{AccountConfig, Config};
use creditwatch::ingest::{Job, Tracker, ingest};
use creditwatch::metrics::Exporter;
use creditwatch::providers::{ProviderSettings, floow, fluximage, imagerouter};
use creditwatch::state::State;
use creditwatch::store::Store;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap()
}

/// Accounts of each provider, as `scripts/bench` generates them.
fn accounts(n: usize) -> Vec<AccountConfig> {
    let mut text = String::new();
    for i in 0..n {
        let provider = ["fluximage", "imagerouter", "floow"][i % 3];
        text.push_str(&format!(
            "[[account]]\nname = \"acct-{i:05}\"\nprovider = \"{provider}\"\napi_key = \"k\"\n"
        ));
        match provider {
            "fluximage" => text.push_str("billing_anchor = \"2026-01-15\"\n"),
            "floow" => text.push_str("billing_anchor = \"2026-01-15\"\nmonthly_allowance = 3000\n"),
            _ => {}
        }
    }
    let (config, _) = Config::parse(&text, Path::new("bench.toml"), Path::new("."), &|_| None)
        .expect("the generated config is valid");
    config.accounts
}

fn fluximage_body(used: u64) -> String {
    format!(
        r#"{{"plan":"starter","compressor_used":{used},"compressor_limit":200,"ia_credits_used":{used},"ia_credits_monthly":200,"ia_topup_credits":50,"ia_credits_remaining":{},"canCompress":true,"canUseIA":true}}"#,
        250 - used
    )
}

fn imagerouter_body(keys: usize, spent: f64) -> String {
    let list: Vec<String> = (0..keys)
        .map(|j| {
            format!(
                r#"{{"api_key_id":"id-{j}","api_key_name":"key-{j}","credit_usage":"{spent:.4}","total_requests":{j},"created_at":null,"is_active":true,"spend_limit":"5.0000","spend_limit_period":"day","period_spend":"{:.4}","period_start":"2026-11-20T00:00:00.000Z","expires_at":null}}"#,
                spent.min(5.0)
            )
        })
        .collect();
    format!(
        r#"{{"remaining_credits":"{:.4}","credit_usage":"{spent:.4}","total_deposits":"100.0000","usage_by_api_key":[{}]}}"#,
        100.0 - spent,
        list.join(",")
    )
}

fn floow_body(now: DateTime<Utc>) -> String {
    let days: Vec<String> = (0..31)
        .map(|k| {
            let d = now.date_naive() - Duration::days(30 - k);
            format!(r#"{{"date":"{d}","calls":5,"credits":50}}"#)
        })
        .collect();
    format!(
        r#"{{"period":{{"start":"2026-10-21T00:00:00.000Z","end":"2026-11-20T12:00:00.000Z","days":31}},"summary":{{"totalCalls":155,"totalCredits":1550,"byEndpoint":{{"image_to_html":{{"calls":100,"credits":1000,"label":"Image → HTML"}},"code_export":{{"calls":55,"credits":550,"label":"Export Code"}}}}}},"daily":[{}]}}"#,
        days.join(",")
    )
}

/// One poll's reading of `account` at `now`, with consumption growing by the minute.
fn reading(account: &AccountConfig, now: DateTime<Utc>) -> creditwatch::providers::Reading {
    let minutes = ((now - t0()).num_minutes() / 5).clamp(0, 200) as u64;
    match &account.provider {
        ProviderSettings::Fluximage(_) => fluximage::parse(
            fluximage_body(minutes).as_bytes(),
            account.billing_anchor.unwrap(),
        ),
        ProviderSettings::Imagerouter(s) => imagerouter::parse(
            imagerouter_body(2, minutes as f64 / 100.0).as_bytes(),
            now,
            s.per_key,
        ),
        ProviderSettings::Floow(s) => floow::parse(
            floow_body(now).as_bytes(),
            now,
            account.billing_anchor.unwrap(),
            s.monthly_allowance,
        ),
        _ => unreachable!(),
    }
    .expect("the body parses")
}

fn render(c: &mut Criterion) {
    // One account of each provider with a little history, copied to many accounts: rendering
    // costs the same whatever the values.
    let accounts = accounts(3);
    let store = Store::in_memory();
    let mut snapshots = Vec::new();
    for step in 0..2 {
        let now = t0() + Duration::minutes(5 * step);
        snapshots = accounts
            .iter()
            .map(|a| ingest(&store, a, reading(a, now), now).0)
            .collect();
    }
    for n in [1_000, 10_000] {
        let state = State::new();
        for i in 0..n {
            let a = &accounts[i % 3];
            let name = format!("acct-{i:05}");
            state.add_account(&name, a.provider.name(), false);
            state.record_success(&name, 0.05, snapshots[i % 3].clone());
        }
        let exporter = Exporter::new(state);
        c.bench_function(&format!("metrics/render/{n}_accounts"), |b| {
            b.iter(|| black_box(exporter.render().len()))
        });
        // What `/metrics` does: the text in chunks, never whole.
        c.bench_function(&format!("metrics/stream/{n}_accounts"), |b| {
            b.iter(|| {
                let mut bytes = 0;
                exporter.stream(|chunk| {
                    bytes += chunk.len();
                    true
                });
                black_box(bytes)
            })
        });
    }
}

fn poll(c: &mut Criterion) {
    // A day of 5-minute history for one account of each provider, then one more poll each.
    let accounts = accounts(3);
    let store = Store::in_memory();
    let mut now = t0();
    for _ in 0..288 {
        now += Duration::minutes(5);
        for a in &accounts {
            let _ = ingest(&store, a, reading(a, now), now);
        }
    }
    for a in &accounts {
        let r = reading(a, now);
        let name = format!("poll/ingest/{}", a.provider.name());
        let mut t = now;
        c.bench_function(&name, |b| {
            b.iter(|| {
                t += Duration::seconds(1);
                black_box(ingest(&store, a, r.clone(), t))
            })
        });
    }
    // The daemon's own path for one account with 10,000 keys: the writer's tracker kept from
    // poll to poll, an hour of 5-minute history behind it.
    let a = &accounts[1];
    let store = Store::in_memory();
    let mut tracker = Tracker::default();
    let mut t = t0();
    let job = |t: DateTime<Utc>, i: u32| Job {
        account: Arc::new(a.clone()),
        reading: imagerouter::parse(
            imagerouter_body(10_000, f64::from(i) / 100.0).as_bytes(),
            t,
            true,
        )
        .unwrap(),
        now: t,
    };
    for i in 0..12 {
        t += Duration::minutes(5);
        tracker.ingest_batch(&store, vec![job(t, i)]);
    }
    let mut i = 12;
    c.bench_function("poll/ingest/imagerouter_10000_keys_tracked", |b| {
        b.iter_batched(
            || {
                t += Duration::minutes(5);
                i += 1;
                job(t, i)
            },
            |job| black_box(tracker.ingest_batch(&store, vec![job])),
            BatchSize::PerIteration,
        )
    });
    let body = imagerouter_body(10_000, 1.0);
    c.bench_function("parse/imagerouter/10000_keys", |b| {
        b.iter(|| black_box(imagerouter::parse(body.as_bytes(), now, true).unwrap()))
    });
    let body = floow_body(now);
    c.bench_function("parse/floow/31_days", |b| {
        b.iter(|| {
            black_box(floow::parse(body.as_bytes(), now, t0().date_naive(), Some(3000.0)).unwrap())
        })
    });
}

criterion_group!(benches, render, poll);
criterion_main!(benches);
