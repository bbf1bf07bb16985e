//! Output: a small table for people, or one line of JSON for scripts.
//!
//! Both come from the same [`Fields`], so they never disagree. JSON keys
//! that do not apply to the mode are null (common keys) or absent
//! (another mode's keys).

use crate::modes::{Config, Mode, Summary, SMALL_MESSAGE};
use serde_json::{Map, Value};

/// One reported value with its JSON key and table label.
struct Field {
    key: &'static str,
    label: &'static str,
    value: Value,
    unit: &'static str,
}

struct Fields(Vec<Field>);

impl Fields {
    fn add(&mut self, key: &'static str, label: &'static str, value: Value, unit: &'static str) {
        self.0.push(Field {
            key,
            label,
            value,
            unit,
        });
    }
}

/// Rounds to 3 decimals: more digits than that are noise in a benchmark,
/// and they make the JSON hard to read.
fn round3(x: f64) -> Value {
    if x.is_finite() {
        Value::from((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn per_sec(n: f64, secs: f64) -> Value {
    if secs > 0.0 {
        round3(n / secs)
    } else {
        Value::Null
    }
}

fn fields(cfg: &Config, s: &Summary) -> Fields {
    let secs = s.elapsed.as_secs_f64();
    let mut f = Fields(Vec::with_capacity(20));
    let null_unless = |applies: bool, v: Value| if applies { v } else { Value::Null };
    f.add("mode", "mode", Value::from(cfg.mode.name()), "");
    f.add("addr", "address", Value::from(cfg.addr.to_string()), "");
    f.add(
        "connections",
        "connections",
        null_unless(
            !matches!(cfg.mode, Mode::Connrate | Mode::Udp | Mode::Soak),
            Value::from(cfg.connections),
        ),
        "",
    );
    let size = match cfg.mode {
        Mode::Pingpong | Mode::Udp => Value::from(cfg.size),
        Mode::Connrate | Mode::Hold => Value::from(SMALL_MESSAGE),
        Mode::Bulk | Mode::Soak => Value::Null,
    };
    f.add("size", "message size", size, "B");
    f.add(
        "parallel",
        "parallel loops",
        null_unless(cfg.mode == Mode::Connrate, Value::from(cfg.parallel)),
        "",
    );
    f.add("threads", "threads", Value::from(s.threads), "");
    f.add(
        "sources",
        "source addresses",
        null_unless(cfg.mode != Mode::Udp, Value::from(cfg.sources)),
        "",
    );
    f.add("duration_s", "duration", round3(secs), "s");
    let latencies = |f: &mut Fields| {
        let hist = s.hist.as_ref().filter(|h| !h.is_empty());
        let q = |q: f64| hist.map_or(Value::Null, |h| Value::from(h.value_at_quantile(q)));
        f.add("p50_us", "latency p50", q(0.50), "us");
        f.add("p99_us", "latency p99", q(0.99), "us");
        f.add("p999_us", "latency p99.9", q(0.999), "us");
        f.add(
            "max_us",
            "latency max",
            hist.map_or(Value::Null, |h| Value::from(h.max())),
            "us",
        );
    };
    match cfg.mode {
        Mode::Pingpong => {
            f.add("round_trips", "round trips", Value::from(s.count), "");
            f.add(
                "round_trips_per_sec",
                "round trips/s",
                per_sec(s.count as f64, secs),
                "",
            );
            latencies(&mut f);
        }
        Mode::Udp => {
            let u = &s.udp;
            f.add("sockets", "sockets", Value::from(cfg.sockets), "");
            f.add(
                "inflight",
                "in flight/socket",
                Value::from(cfg.inflight),
                "",
            );
            f.add(
                "loss_timeout_ms",
                "loss timeout",
                round3(cfg.loss_timeout.as_secs_f64() * 1000.0),
                "ms",
            );
            f.add("sent", "sent", Value::from(u.sent), "");
            f.add("answered", "answered", Value::from(u.answered), "");
            f.add(
                "answered_in_window",
                "answered (window)",
                Value::from(s.count),
                "",
            );
            f.add(
                "answered_per_sec",
                "answered/s",
                per_sec(s.count as f64, secs),
                "",
            );
            latencies(&mut f);
            f.add("lost", "lost", Value::from(u.lost), "");
            let pct = if u.sent > 0 {
                round3(100.0 * u.lost as f64 / u.sent as f64)
            } else {
                Value::Null
            };
            f.add("lost_pct", "lost share", pct, "%");
            f.add("late", "late (after lost)", Value::from(u.late), "");
            f.add("duplicates", "duplicates", Value::from(u.duplicates), "");
            f.add("corrupted", "corrupted", Value::from(u.corrupted), "");
            f.add("wrong_size", "wrong size", Value::from(u.wrong_size), "");
            f.add("crosstalk", "cross-talk", Value::from(u.crosstalk), "");
            f.add(
                "client_drops",
                "client drops",
                u.client_drops.map_or(Value::Null, Value::from),
                "",
            );
        }
        Mode::Bulk => {
            f.add("bytes_echoed", "bytes echoed", Value::from(s.bytes), "");
            f.add(
                "mib_per_sec",
                "throughput",
                per_sec(s.bytes as f64 / (1u64 << 20) as f64, secs),
                "MiB/s",
            );
            f.add("completed", "completed", Value::from(s.count), "");
        }
        Mode::Connrate => {
            f.add(
                "connections_made",
                "connections made",
                Value::from(s.count),
                "",
            );
            f.add(
                "connections_per_sec",
                "connections/s",
                per_sec(s.count as f64, secs),
                "",
            );
        }
        Mode::Hold => {
            f.add("open", "open at once", Value::from(s.opened), "");
            f.add(
                "all_open_s",
                "all open after",
                s.all_open.map_or(Value::Null, |d| round3(d.as_secs_f64())),
                "s",
            );
            f.add("held", "held", Value::from(s.count), "");
            f.add("failed", "failed", Value::from(s.failed), "");
        }
        Mode::Soak => soak_fields(&mut f, cfg, s, secs),
    }
    f.add("errors", "errors", Value::from(s.tally.errors), "");
    f.add(
        "verify_errors",
        "verify errors",
        Value::from(s.tally.verify_errors),
        "",
    );
    f
}

/// What a soak run did, per kind, and the totals a server's own counters
/// can be checked against.
fn soak_fields(f: &mut Fields, cfg: &Config, s: &Summary, secs: f64) {
    let k = &s.soak;
    let udp = cfg.udp_addr.is_some();
    let udp_only = |v: u64| if udp { Value::from(v) } else { Value::Null };
    f.add(
        "udp_addr",
        "UDP address",
        cfg.udp_addr
            .map_or(Value::Null, |a| Value::from(a.to_string())),
        "",
    );
    let load = &cfg.soak;
    f.add("load_churn", "churn slots", Value::from(load.churn), "");
    f.add(
        "load_churn_rate",
        "churn rate limit",
        Value::from(load.churn_rate),
        "/s",
    );
    f.add(
        "load_bulk_streams",
        "bulk slots",
        Value::from(load.bulk),
        "",
    );
    f.add(
        "load_bulk_rate",
        "bulk rate each",
        Value::from(load.bulk_rate),
        "B/s",
    );
    f.add("churned", "churned", Value::from(k.churned()), "");
    f.add(
        "churned_per_sec",
        "churned/s",
        per_sec(k.churned() as f64, secs),
        "",
    );
    f.add("churn_plain", "  plain close", Value::from(k.plain), "");
    f.add("churn_reset", "  reset", Value::from(k.reset), "");
    f.add(
        "churn_half_close",
        "  half-close",
        Value::from(k.half_close),
        "",
    );
    f.add("churn_vanish", "  vanished", Value::from(k.vanish), "");
    f.add(
        "bulk_streams",
        "bulk streams",
        Value::from(k.bulk_streams),
        "",
    );
    f.add("bulk_bytes", "bulk bytes", Value::from(k.bulk_bytes), "");
    f.add("idle_opened", "idle opened", Value::from(k.idle_opened), "");
    f.add("idle_held", "idle held", Value::from(k.idle_held), "");
    f.add("udp_sent", "datagrams sent", udp_only(k.udp_sent), "");
    f.add("udp_answered", "answered", udp_only(k.udp_answered), "");
    f.add("udp_lost", "lost", udp_only(k.udp_lost), "");
    f.add("udp_late", "late", udp_only(k.udp_late), "");
    f.add("udp_bytes", "datagram bytes", udp_only(k.udp_bytes), "");
    f.add(
        "tcp_connections",
        "TCP connections",
        Value::from(k.connections),
        "",
    );
    f.add(
        "bytes_sent",
        "TCP bytes sent",
        Value::from(k.bytes_sent),
        "",
    );
    f.add(
        "bytes_echoed",
        "TCP bytes echoed",
        Value::from(k.bytes_echoed),
        "",
    );
    f.add(
        "bytes_abandoned",
        "bytes abandoned",
        Value::from(k.abandoned()),
        "",
    );
}

/// The single-line JSON report.
pub fn json(cfg: &Config, s: &Summary) -> String {
    let map: Map<String, Value> = fields(cfg, s)
        .0
        .into_iter()
        .map(|f| (f.key.to_string(), f.value))
        .collect();
    Value::Object(map).to_string()
}

/// The human-readable table; inapplicable rows are left out.
pub fn table(cfg: &Config, s: &Summary) -> String {
    let mut out = String::new();
    for f in fields(cfg, s).0 {
        let value = match &f.value {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let unit = if f.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", f.unit)
        };
        out.push_str(&format!("{:<18}{value}{unit}\n", f.label));
    }
    out
}
