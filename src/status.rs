//! The status page served at `/`: one card per pool, soonest exhaustion first, with an inline SVG chart; no scripts, no external assets.
//!
//! The page is a pure function of the accounts' state, each pool's recent `remaining` history and
//! the time, so tests can render it without a server. Everything that came from a config or an
//! upstream (account, pool and key names, plans, error messages) is escaped. It refreshes itself
//! with `<meta http-equiv="refresh">`, so it works with JavaScript off.

use crate::forecast::Forecast;
use crate::forecast::schedule::Period;
use crate::providers::Unit;
use crate::state::{AccountState, PoolState};
use crate::store::{PoolId, Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Most points a card's history line is drawn from, whatever the poll interval.
pub const MAX_CHART_POINTS: usize = 120;

/// The history window charted when an account's forecast window is not known.
const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Each pool's `remaining` history, keyed by account and pool.
pub type Histories = HashMap<(String, PoolId), Vec<(i64, f64)>>;

/// Reads the chart history of each pool on the page that has a `remaining`: the forecast window
/// before the pool's last reading. Runs blocking store queries: one walk per account, however
/// many of its pools the page shows.
pub fn gather(store: &Store, page: &Page<'_>) -> Result<Histories, StoreError> {
    // The page's pools by account, in the order they first appear.
    let mut by_account: Vec<(&AccountState, Vec<PoolId>)> = Vec::new();
    for &(a, p) in &page.pools {
        if p.reading.remaining.is_none() {
            continue;
        }
        let id = PoolId {
            pool: p.reading.pool.clone(),
            key: p.reading.key.clone(),
        };
        match by_account.iter_mut().find(|(b, _)| std::ptr::eq(*b, a)) {
            Some((_, ids)) => ids.push(id),
            None => by_account.push((a, vec![id])),
        }
    }
    let mut out = Histories::new();
    for (a, ids) in by_account {
        let Some(snap) = &a.snapshot else { continue };
        let until = snap.at.timestamp_millis();
        let since = until - window_of(a).as_millis() as i64;
        let histories = store.remaining_histories(&a.name, &ids, since, until, MAX_CHART_POINTS)?;
        for (id, h) in ids.into_iter().zip(histories) {
            out.insert((a.name.to_string(), id), h);
        }
    }
    Ok(out)
}

/// Pools (cards) and accounts (table rows) a page shows when the query does not say.
pub const DEFAULT_PER_PAGE: usize = 100;
/// The most a page may show of each: a card is about 2.3 KB of HTML and a chart history to read.
pub const MAX_PER_PAGE: usize = 1000;

/// Which part of the page to show: the query's `page`, `per_page` and `account`.
///
/// At 10,000 accounts the whole page was 46 MB of HTML (20,000 cards) and took seconds to build,
/// read every pool's history and held them all in memory; a browser cannot use it either. The
/// cards come most urgent first, so page 1 is the one to look at, and the accounts' table lists
/// the accounts that are down first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
    /// Only this account's pools and row.
    pub account: Option<String>,
    /// The query's `refresh`, kept in the page's links.
    pub refresh: Option<u64>,
}

impl Default for View {
    fn default() -> Self {
        View {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            account: None,
            refresh: None,
        }
    }
}

/// One page: its share of the pools (most urgent first) and of the accounts (down first), with
/// the totals it was cut from.
pub struct Page<'a> {
    pub view: View,
    /// This page's pools, in order.
    pub pools: Vec<(&'a AccountState, &'a PoolState)>,
    /// This page's accounts, in order.
    pub accounts: Vec<&'a AccountState>,
    /// Pools and accounts the view matches, over all pages.
    pub matching_pools: usize,
    pub matching_accounts: usize,
    /// Every account and pool, and the accounts down, whatever the view.
    pub all_accounts: usize,
    pub all_pools: usize,
    pub down: usize,
    /// How many pages the view has (at least 1).
    pub pages: usize,
}

/// Sort key of a pool: when it runs out; pools that never do go last.
fn runs_out_at(p: &PoolState) -> f64 {
    p.forecast.exhaustion.unwrap_or(f64::INFINITY)
}

/// Chooses what `view` shows of `accounts`. Sorting is by reference, so only the page's cards
/// are ever built.
pub fn select<'a>(accounts: &'a [Arc<AccountState>], mut view: View) -> Page<'a> {
    // The server refuses anything else; a caller that did not check gets the nearest view.
    view.page = view.page.max(1);
    view.per_page = view.per_page.clamp(1, MAX_PER_PAGE);
    let wanted = |a: &AccountState| view.account.as_deref().is_none_or(|n| *a.name == *n);
    let mut pools: Vec<(&AccountState, &PoolState)> = Vec::new();
    let mut all_pools = 0;
    for a in accounts {
        let Some(snap) = &a.snapshot else { continue };
        all_pools += snap.pools.len();
        if wanted(a) {
            pools.extend(snap.pools.iter().map(|p| (&**a, p)));
        }
    }
    // Soonest exhaustion first; ties (and pools that never run out) by name, so the order is
    // stable from one reload to the next.
    pools.sort_by(|(a, p), (b, q)| {
        runs_out_at(p)
            .total_cmp(&runs_out_at(q))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| p.reading.pool.cmp(&q.reading.pool))
            .then_with(|| p.reading.key.cmp(&q.reading.key))
    });
    // Down first, then waiting for a first poll, then up; in config order within each.
    let rank = |a: &AccountState| match (a.attempts, a.up) {
        (_, false) if a.attempts > 0 => 0,
        (0, _) => 1,
        _ => 2,
    };
    let mut listed: Vec<&AccountState> = accounts
        .iter()
        .map(|a| &**a)
        .filter(|a| wanted(a))
        .collect();
    listed.sort_by_key(|a| rank(a));
    let (matching_pools, matching_accounts) = (pools.len(), listed.len());
    let pages = matching_pools
        .max(matching_accounts)
        .div_ceil(view.per_page)
        .max(1);
    let slice = |n: usize| {
        let start = (view.page - 1).saturating_mul(view.per_page).min(n);
        start..(start + view.per_page).min(n)
    };
    let pools = pools.drain(slice(matching_pools)).collect();
    let accounts_shown = listed.drain(slice(matching_accounts)).collect();
    Page {
        pools,
        accounts: accounts_shown,
        matching_pools,
        matching_accounts,
        all_accounts: accounts.len(),
        all_pools,
        down: accounts.iter().filter(|a| a.attempts > 0 && !a.up).count(),
        pages,
        view,
    }
}

/// The query string of `view` at `page`, with `refresh` as asked, for the page's links.
fn link(view: &View, page: usize) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(a) = &view.account {
        q.append_pair("account", a);
    }
    if page != 1 {
        q.append_pair("page", &page.to_string());
    }
    if view.per_page != DEFAULT_PER_PAGE {
        q.append_pair("per_page", &view.per_page.to_string());
    }
    if let Some(r) = view.refresh {
        q.append_pair("refresh", &r.to_string());
    }
    let q = q.finish();
    if q.is_empty() {
        "/".into()
    } else {
        format!("/?{q}")
    }
}

fn window_of(a: &AccountState) -> Duration {
    a.forecast_window
        .as_ref()
        .map(|w| w.duration)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_WINDOW)
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// How often the page reloads itself: the shortest poll interval, within 5..60 seconds.
pub fn refresh_seconds(accounts: &[Arc<AccountState>]) -> u64 {
    accounts
        .iter()
        .filter_map(|a| a.interval)
        .min()
        .map(|d| d.as_secs().clamp(5, 60))
        .unwrap_or(30)
}

/// One pool as the page shows it.
struct Card<'a> {
    account: &'a str,
    provider: &'a str,
    up: bool,
    at: DateTime<Utc>,
    window: Duration,
    window_label: String,
    pool: &'a PoolState,
    history: &'a [(i64, f64)],
}

impl Card<'_> {
    fn forecast(&self) -> &Forecast {
        &self.pool.forecast
    }

    fn state(&self) -> (&'static str, &'static str) {
        let r = &self.pool.reading;
        let Some(rem) = r.remaining else {
            return ("unlimited", "Unlimited");
        };
        if rem <= 0.0 {
            return ("bad", "Exhausted");
        }
        if self.forecast().exhausts_before_reset == Some(true) {
            return ("bad", "Runs out before reset");
        }
        let ratio = r.limit.filter(|l| *l > 0.0).map(|l| rem / l);
        if ratio.is_some_and(|x| x < 0.1) {
            return ("warn", "Low");
        }
        if self.pool.period.is_none() && self.forecast().exhaustion.is_some() {
            return ("warn", "Runs out (no reset)");
        }
        ("ok", "Lasts to reset")
    }
}

/// Renders one page; it reloads itself every `refresh` seconds, or never with `None`.
pub fn render(
    page: &Page<'_>,
    histories: &Histories,
    now: DateTime<Utc>,
    refresh: Option<u64>,
    version: &str,
) -> String {
    let cards = page.pools.iter().map(|&(a, p)| {
        let name = &*a.name;
        let id = PoolId {
            pool: p.reading.pool.clone(),
            key: p.reading.key.clone(),
        };
        Card {
            account: name,
            provider: a.provider,
            up: a.up,
            // Every pool listed comes from a snapshot.
            at: a.snapshot.as_ref().map_or(now, |s| s.at),
            window: window_of(a),
            window_label: a
                .forecast_window
                .as_ref()
                .map(|w| w.label.to_string())
                .unwrap_or_else(|| "24h".into()),
            pool: p,
            history: histories
                .get(&(name.to_string(), id))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        }
    });

    let (refresh_meta, refresh_note) = match refresh {
        Some(n) => (
            format!("<meta http-equiv=\"refresh\" content=\"{n}\">\n"),
            format!("refreshes every {n}s"),
        ),
        None => (String::new(), "auto-refresh off".to_string()),
    };
    let down = page.down;
    // One buffer for the whole page, cards written into it.
    let mut out = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh_meta}<title>creditwatch status</title>
<style>{STYLE}</style>
</head><body>
<header><h1>creditwatch</h1>
<p class="summary">{pools} pool(s) in {accts} account(s){down_note} · as of {now} · {refresh_note}</p>
<nav><a href="/metrics">metrics</a> <a href="/-/healthy">healthy</a> <a href="/-/ready">ready</a> <a href="/runbook">runbook</a></nav>
</header>
<main>
"#,
        pools = group(page.all_pools as f64, 0),
        accts = group(page.all_accounts as f64, 0),
        down_note = if down > 0 {
            format!(", <span class=\"bad-text\">{down} down</span>")
        } else {
            String::new()
        },
        now = esc(&fmt_time(now)),
    );
    pager(&mut out, page);
    out.push_str("<section class=\"cards\">\n");
    if page.pools.is_empty() {
        let empty = if page.view.page > page.pages {
            format!(
                "Page {} is past the last page ({}): <a href=\"{}\">first page</a>.",
                page.view.page,
                page.pages,
                esc(&link(&page.view, 1))
            )
        } else if page.matching_pools > 0 {
            // More accounts than pools: the accounts' table goes on past the last card.
            format!(
                "The {} pool(s) are on earlier pages.",
                group(page.matching_pools as f64, 0)
            )
        } else if page.view.account.is_some() {
            "This account has no pool yet: waiting for its first successful poll.".to_string()
        } else {
            "No pool has been read yet: waiting for the first successful poll.".to_string()
        };
        let _ = writeln!(out, "<p class=\"empty\">{empty}</p>");
    }
    for c in cards {
        card(&mut out, &c, now);
    }
    let _ = write!(
        out,
        r#"</section>
<h2>Accounts</h2>
{table}"#,
        table = accounts_table(&page.accounts, page.view.refresh),
    );
    pager(&mut out, page);
    let _ = write!(
        out,
        r#"</main>
<footer>creditwatch {version}. Dates are UTC. Charts: remaining over the forecast window (left of the “now” line), then projected at the forecast burn to the next reset (dashed).</footer>
</body></html>
"#,
        version = esc(version),
    );
    out
}

/// Which pools and accounts of how many the page shows, and links to the pages around it;
/// nothing when everything fits on one page and no account is picked.
fn pager(out: &mut String, page: &Page<'_>) {
    let v = &page.view;
    if page.pages == 1 && v.account.is_none() {
        return;
    }
    let range = |shown: usize, total: usize| {
        let first = (v.page - 1).saturating_mul(v.per_page);
        if shown == 0 {
            format!("none of {}", group(total as f64, 0))
        } else {
            format!(
                "{}–{} of {}",
                group((first + 1) as f64, 0),
                group((first + shown) as f64, 0),
                group(total as f64, 0)
            )
        }
    };
    out.push_str("<nav class=\"pager\">");
    if let Some(a) = &v.account {
        let all = View {
            account: None,
            page: 1,
            ..v.clone()
        };
        let _ = write!(
            out,
            "Account <b>{}</b> only (<a href=\"{}\">every account</a>) · ",
            esc(a),
            esc(&link(&all, 1))
        );
    }
    let _ = write!(
        out,
        "Pools {} · accounts {} · page {} of {}",
        range(page.pools.len(), page.matching_pools),
        range(page.accounts.len(), page.matching_accounts),
        v.page,
        page.pages
    );
    for (label, rel, to) in [
        ("first", "first", 1),
        ("previous", "prev", v.page.saturating_sub(1)),
        ("next", "next", v.page.saturating_add(1)),
        ("last", "last", page.pages),
    ] {
        if to >= 1 && to <= page.pages && to != v.page {
            let _ = write!(
                out,
                " <a rel=\"{rel}\" href=\"{}\">{label}</a>",
                esc(&link(v, to))
            );
        }
    }
    out.push_str("</nav>\n");
}

fn card(out: &mut String, c: &Card<'_>, now: DateTime<Utc>) {
    let r = &c.pool.reading;
    let f = c.forecast();
    let (class, label) = c.state();
    let provider = esc(c.provider);
    let name = if r.key.is_empty() {
        r.pool.clone()
    } else {
        format!("{} / {}", r.pool, r.key)
    };
    let _ = write!(
        out,
        "<article class=\"card {class}\" data-provider=\"{provider}\" data-account=\"{}\" data-pool=\"{}\" data-key=\"{}\" data-exhaustion=\"{}\">\n\
         <h2><span class=\"account\">{}</span> <span class=\"pool\">{}</span> <small>{provider}</small></h2>\n\
         <p class=\"badge\">{label}{}</p>\n<dl>\n",
        esc(c.account),
        esc(&r.pool),
        esc(&r.key),
        f.exhaustion.map(|t| format!("{t:.0}")).unwrap_or_default(),
        esc(c.account),
        esc(&name),
        if c.up {
            String::new()
        } else {
            format!(
                " · <span class=\"stale\">account down; as of {}</span>",
                esc(&fmt_time(c.at))
            )
        },
    );
    let remaining = match (r.remaining, r.limit) {
        (Some(rem), Some(lim)) if lim > 0.0 => format!(
            "{} <small>of {} ({:.0}%)</small>",
            amount(rem, r.unit),
            amount(lim, r.unit),
            (rem / lim * 100.0).clamp(0.0, 100.0)
        ),
        (Some(rem), _) => amount(rem, r.unit),
        (None, _) => match r.used {
            Some(u) => format!("unlimited <small>({} used)</small>", amount(u, r.unit)),
            None => "unlimited".into(),
        },
    };
    row(out, "Remaining", &remaining);
    let burn = match f.burn_forecast {
        Some(b) => format!(
            "{}/day <small>({} window)</small>",
            amount(b * 86_400.0, r.unit),
            esc(&c.window_label)
        ),
        None => "not known yet".into(),
    };
    row(out, "Burn", &burn);
    let exhaustion = match (r.remaining, f.exhaustion) {
        (None, _) => "never".to_string(),
        (Some(rem), _) if rem <= 0.0 => "empty now".to_string(),
        (Some(_), Some(t)) => when(t, now),
        (Some(_), None) => "not at the current burn".to_string(),
    };
    let _ = writeln!(
        out,
        "<dt>Runs out</dt><dd class=\"runs-out\">{exhaustion}</dd>"
    );
    let reset = match c.pool.period {
        Some(p) => {
            let mut s = when(secs(p.end), now);
            if let Some(left) = f.projected_remaining_at_reset {
                let _ = write!(
                    s,
                    "<br><small>{} at reset</small>",
                    if left < 0.0 {
                        format!("{} short", amount(-left, r.unit))
                    } else {
                        format!("{} left", amount(left, r.unit))
                    }
                );
            }
            s
        }
        None => "never".to_string(),
    };
    row(out, "Resets", &reset);
    out.push_str("</dl>\n");
    if r.remaining.is_some() {
        chart(out, c);
    }
    out.push_str("</article>\n");
}

fn row(out: &mut String, term: &str, value: &str) {
    let _ = writeln!(out, "<dt>{term}</dt><dd>{value}</dd>");
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A date with how far away it is: `2026-12-01 00:00 UTC (in 9d 12h)`.
fn when(t: f64, now: DateTime<Utc>) -> String {
    let Some(at) = DateTime::from_timestamp_millis((t * 1000.0) as i64) else {
        return "—".into();
    };
    let delta = t - secs(now);
    let rel = if delta >= 0.0 {
        format!("in {}", span(delta))
    } else {
        format!("{} ago", span(-delta))
    };
    format!("{} <small>({rel})</small>", esc(&fmt_time(at)))
}

/// A duration in its two largest units: `3d 4h`, `5h 12m`, `42s`.
fn span(secs: f64) -> String {
    let s = secs.round() as u64;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// An amount in its unit: `$12.40`, `1,234 credits`.
fn amount(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Usd => {
            let decimals = if v != 0.0 && v.abs() < 1.0 { 4 } else { 2 };
            let sign = if v < 0.0 { "−" } else { "" };
            format!("{sign}${}", group(v.abs(), decimals))
        }
        Unit::Credits => {
            let decimals = if v.abs() >= 100.0 || v.fract() == 0.0 {
                0
            } else {
                1
            };
            format!("{} credits", group(v, decimals))
        }
    }
}

/// Formats with thousands separators.
fn group(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let mut g = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            g.push(',');
        }
        g.push(ch);
    }
    let sign = if v < 0.0 && s.chars().any(|c| c != '0' && c != '.') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{g}")
    } else {
        format!("{sign}{g}.{frac}")
    }
}

// Chart geometry, in SVG user units.
const W: f64 = 320.0;
const H: f64 = 96.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 78.0;
/// Where "now" sits: history to the left, projection to the right.
const SPLIT: f64 = 128.0;

/// The inline chart: remaining over the forecast window, then the projection to the reset.
///
/// The two halves have their own time scales (the window is often a day, the reset weeks away),
/// and the labels say so.
fn chart(out: &mut String, c: &Card<'_>) {
    let r = &c.pool.reading;
    let f = c.forecast();
    let Some(rem) = r.remaining else { return };
    let now = secs(c.at);
    let burn = f.burn_forecast.unwrap_or(0.0);
    let reset = c.pool.period.map(|p: Period| secs(p.end));
    // Where the projection ends: the reset, else exhaustion, else one window ahead.
    let end = reset
        .or(f.exhaustion.filter(|t| *t > now))
        .unwrap_or(now + c.window.as_secs_f64());
    let exhaustion = f.exhaustion.filter(|t| *t <= end);

    // The allocation is the natural top, so the line shows how full the pool is; top-ups can
    // push remaining above it.
    let top_value = c
        .history
        .iter()
        .map(|(_, v)| *v)
        .chain([rem, r.limit.unwrap_or(0.0)])
        .fold(0.0_f64, f64::max);
    let top_value = if top_value > 0.0 { top_value } else { 1.0 };
    let y = |v: f64| BOTTOM - (v.max(0.0) / top_value) * (BOTTOM - TOP);
    let window = c.window.as_secs_f64();
    let x_hist = |t: f64| SPLIT * ((t - (now - window)) / window).clamp(0.0, 1.0);
    let x_proj = |t: f64| SPLIT + (W - SPLIT) * ((t - now) / (end - now).max(1.0)).clamp(0.0, 1.0);

    let mut hist: Vec<String> = c
        .history
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x_hist(*t as f64 / 1000.0), y(*v)))
        .collect();
    if hist.is_empty() {
        hist.push(format!("{SPLIT:.1},{:.1}", y(rem)));
    }
    let mut proj = vec![format!("{SPLIT:.1},{:.1}", y(rem))];
    let mut empty = None;
    match exhaustion {
        Some(t) if rem > 0.0 => {
            proj.push(format!("{:.1},{:.1}", x_proj(t), y(0.0)));
            if t < end {
                empty = Some(x_proj(t));
            }
        }
        Some(_) => empty = Some(SPLIT),
        None => proj.push(format!("{W:.1},{:.1}", y(rem - burn * (end - now)))),
    }

    let title = format!(
        "{} {}: remaining over the last {}, then projected to {}",
        c.account,
        if r.key.is_empty() {
            r.pool.clone()
        } else {
            format!("{} / {}", r.pool, r.key)
        },
        c.window_label,
        match reset {
            Some(_) => "the next reset",
            None if exhaustion.is_some() => "exhaustion",
            None => "one window ahead",
        }
    );
    let _ = writeln!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(&title)
    );
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"0\" y1=\"{BOTTOM}\" x2=\"{W}\" y2=\"{BOTTOM}\"/>\
         <line class=\"now\" x1=\"{SPLIT}\" y1=\"{TOP}\" x2=\"{SPLIT}\" y2=\"{BOTTOM}\"/>"
    );
    if reset.is_some() {
        let _ = writeln!(
            out,
            "<line class=\"reset\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{BOTTOM}\"/>",
            x = W - 1.0
        );
    }
    let _ = writeln!(
        out,
        "<polyline class=\"history\" points=\"{}\"/>",
        hist.join(" ")
    );
    let _ = writeln!(
        out,
        "<polyline class=\"projection\" points=\"{}\"/>",
        proj.join(" ")
    );
    if let Some(x) = empty {
        let _ = writeln!(
            out,
            "<line class=\"exhausted\" x1=\"{x:.1}\" y1=\"{BOTTOM}\" x2=\"{W}\" y2=\"{BOTTOM}\"/>\
             <circle class=\"exhausted\" cx=\"{x:.1}\" cy=\"{BOTTOM}\" r=\"3\"/>"
        );
    }
    let _ = writeln!(
        out,
        "<text class=\"label\" x=\"2\" y=\"10\">{}</text>\
         <text class=\"label\" x=\"0\" y=\"{ly}\">−{}</text>\
         <text class=\"label\" x=\"{SPLIT}\" y=\"{ly}\" text-anchor=\"middle\">now</text>\
         <text class=\"label\" x=\"{W}\" y=\"{ly}\" text-anchor=\"end\">{}</text>",
        esc(&amount(top_value, r.unit)),
        esc(&c.window_label),
        esc(&match reset {
            Some(t) => format!("reset {}", short_date(t)),
            None if exhaustion.is_some() => format!("empty {}", short_date(end)),
            None => format!("+{}", c.window_label),
        }),
        ly = H - 4.0,
    );
    out.push_str("</svg>\n");
}

fn short_date(t: f64) -> String {
    DateTime::from_timestamp_millis((t * 1000.0) as i64)
        .map(|d| d.format("%b %-d %H:%M").to_string())
        .unwrap_or_default()
}

fn accounts_table(accounts: &[&AccountState], refresh: Option<u64>) -> String {
    let mut rows = String::new();
    for a in accounts {
        let name = &a.name;
        let only = View {
            account: Some(name.to_string()),
            refresh,
            ..View::default()
        };
        let (class, status) = match (a.attempts, a.up) {
            (0, _) => ("pending", "waiting for first poll"),
            (_, true) => ("up", "up"),
            (_, false) => ("down", "down"),
        };
        let plan = a
            .snapshot
            .as_ref()
            .and_then(|s| s.plan.clone())
            .unwrap_or_default();
        let _ = writeln!(
            rows,
            "<tr data-account=\"{}\"><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"{class}\">{status}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(&link(&only, 1)),
            esc(name),
            esc(a.provider),
            esc(&plan),
            a.last_success
                .map(|t| esc(&fmt_time(t)))
                .unwrap_or_else(|| "never".into()),
            esc(a.last_error.as_deref().unwrap_or("")),
        );
    }
    format!(
        "<table><thead><tr><th>account</th><th>provider</th><th>plan</th><th>status</th><th>last success</th><th>last error</th></tr></thead>\n<tbody>\n{rows}</tbody></table>\n"
    )
}

const STYLE: &str = "\
:root{--fg:#1d2330;--muted:#5d6678;--line:#d9dde5;--ok:#1a7f37;--warn:#b7791f;--bad:#c62828;--card:#fff;--bg:#f4f6f9}\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
header,main,footer{max-width:1200px;margin:0 auto;padding:12px 20px}\
h1{margin:8px 0 2px;font-size:22px}.summary{margin:0;color:var(--muted)}\
nav a{margin-right:12px;color:#1f5fbf}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}\
.card{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--ok);border-radius:6px;padding:10px 14px}\
.card.warn{border-left-color:var(--warn)}.card.bad{border-left-color:var(--bad)}.card.unlimited{border-left-color:var(--muted)}\
.card h2{font-size:16px;margin:0;overflow-wrap:anywhere}.card .pool{color:var(--muted);font-weight:normal}\
.badge{margin:2px 0 6px;font-size:12px;font-weight:600;color:var(--ok)}\
.warn .badge{color:var(--warn)}.bad .badge{color:var(--bad)}.unlimited .badge{color:var(--muted)}\
.stale{color:var(--bad);font-weight:normal}.bad .runs-out{color:var(--bad);font-weight:600}.bad .runs-out small{color:var(--bad)}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 6px}\
dt{color:var(--muted)}dd{margin:0}small{color:var(--muted)}\
.chart{width:100%;height:auto;display:block}\
.chart .axis{stroke:#9aa3b2;stroke-width:1}.chart .now{stroke:#9aa3b2;stroke-dasharray:2 2}\
.chart .reset{stroke:#6b4fbb;stroke-width:1.5;stroke-dasharray:4 2}\
.chart polyline{fill:none;stroke-width:2;stroke-linejoin:round}\
.chart .history{stroke:#1f5fbf}.chart .projection{stroke:#1f5fbf;stroke-dasharray:5 3;opacity:.8}\
.bad .chart .projection{stroke:var(--bad)}\
.chart line.exhausted{stroke:var(--bad);stroke-width:3}.chart circle.exhausted{fill:var(--bad)}\
.chart .label{font-size:9px;fill:var(--muted)}\
table{border-collapse:collapse;background:var(--card);width:100%}\
td,th{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}td:first-child,td:last-child{overflow-wrap:anywhere}\
.up{color:var(--ok)}.down,.bad-text{color:var(--bad)}.pending{color:var(--muted)}\
.empty{color:var(--muted)}\
.pager{margin:12px 0;color:var(--muted)}.pager a{margin-left:8px}\
footer{color:var(--muted);font-size:12px}";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pool already shown on earlier pages while the accounts' table goes on: the page
    /// says where the pools went, and links back.
    #[test]
    fn a_page_past_the_pools_but_not_the_accounts_says_so() {
        let accounts: Vec<Arc<AccountState>> = (0..5)
            .map(|i| Arc::new(AccountState::new(&format!("a{i}"), "fluximage")))
            .collect();
        let view = View {
            page: 2,
            per_page: 3,
            ..View::default()
        };
        let page = select(&accounts, view);
        assert_eq!((page.pages, page.matching_accounts), (2, 5));
        assert_eq!(
            page.accounts.iter().map(|a| &*a.name).collect::<Vec<_>>(),
            ["a3", "a4"]
        );
        let mut page = page;
        // As if three pools had been read, all shown on page 1.
        page.matching_pools = 3;
        let html = render(&page, &Histories::new(), Utc::now(), None, "t");
        assert!(
            html.contains("The 3 pool(s) are on earlier pages."),
            "{html}"
        );
        assert!(
            html.contains("Pools none of 3 · accounts 4–5 of 5 · page 2 of 2"),
            "{html}"
        );
        assert!(
            html.contains("<a rel=\"prev\" href=\"/?per_page=3\">previous</a>"),
            "{html}"
        );
        assert!(!html.contains("rel=\"next\""));

        // A view the server would refuse is clamped rather than a panic.
        let zero = View {
            page: 0,
            per_page: 0,
            ..View::default()
        };
        let page = select(&accounts, zero);
        assert_eq!((page.view.page, page.view.per_page, page.pages), (1, 1, 5));
        // A page number as large as the query can hold is past the last page, not a panic.
        let far = View {
            page: usize::MAX,
            per_page: 3,
            ..View::default()
        };
        let page = select(&accounts, far);
        assert!(page.accounts.is_empty());
        let html = render(&page, &Histories::new(), Utc::now(), None, "t");
        assert!(html.contains("is past the last page (2)"), "{html}");
    }

    #[test]
    fn amounts_read_like_money_and_credits() {
        assert_eq!(amount(1234.6, Unit::Credits), "1,235 credits");
        assert_eq!(amount(12.25, Unit::Credits), "12.2 credits");
        assert_eq!(amount(40.0, Unit::Credits), "40 credits");
        assert_eq!(amount(1_234_567.0, Unit::Credits), "1,234,567 credits");
        assert_eq!(amount(25.5, Unit::Usd), "$25.50");
        assert_eq!(amount(0.03, Unit::Usd), "$0.0300");
        assert_eq!(amount(-4.5, Unit::Usd), "−$4.50");
        assert_eq!(amount(-1500.0, Unit::Credits), "-1,500 credits");
    }

    #[test]
    fn spans_use_their_two_largest_units() {
        assert_eq!(span(42.0), "42s");
        assert_eq!(span(600.0), "10m");
        assert_eq!(span(3.0 * 3600.0 + 120.0), "3h 2m");
        assert_eq!(span(9.0 * 86_400.0 + 12.0 * 3600.0), "9d 12h");
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
