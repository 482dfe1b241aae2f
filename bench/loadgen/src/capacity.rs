//! Scenario 2b, capacity (issue 14): the highest offered fan-out rate (1 → N, open loop)
//! a peer sustains with every message delivered exactly once, in order, and publish →
//! receive p99 under a bound. Doubling from `--start` until a step fails, then bisecting
//! between the last step that passed and the first that failed. Every step is a warm-up
//! and a measured phase in the same room on the same server, after the previous step has
//! fully drained. The load generator's own CPU is reported per step: a step it could not
//! keep up with measures the load generator, not the peer (`loadgen_bound`).

use std::rc::Rc;

use clap::Args;
use serde_json::{json, Value};

use super::{close_all, payload, run_phase_group, setup_groups, Conn, Rig};
use loadgen::cpu_seconds;

#[derive(Args, Clone)]
pub struct CapacityArgs {
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    payloads: Vec<usize>,
    /// First offered rate, deliveries per second.
    #[arg(long, default_value_t = 10_000.0)]
    start: f64,
    /// Highest offered rate tried, deliveries per second.
    #[arg(long, default_value_t = 640_000.0)]
    max: f64,
    /// Bisection steps after the doubling.
    #[arg(long, default_value_t = 3)]
    bisect: usize,
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// A step passes when p99 publish → receive latency is at most this.
    #[arg(long, default_value_t = 100.0)]
    p99_ms: f64,
}

struct Step {
    pass: bool,
    /// Sockets closed: the search cannot go on in this room.
    broken: bool,
    v: Value,
}

async fn step(
    rig: &Rc<Rig>,
    publisher: &mut [Conn],
    a: &CapacityArgs,
    data: &Rc<String>,
    dps: f64,
) -> Step {
    let rate = dps / a.n as f64;
    let me = std::process::id();
    if a.warmup > 0.0 {
        let w = run_phase_group(rig, publisher, 0, a.n, rate, a.warmup, data.clone(), 0.0).await;
        if w["closed_sockets"].as_u64().unwrap_or(0) > 0 {
            return Step {
                pass: false,
                broken: true,
                v: json!({"offered_deliveries_per_sec": dps, "warmup": w}),
            };
        }
    }
    let lg0 = cpu_seconds(me);
    let mut v = run_phase_group(rig, publisher, 0, a.n, rate, a.duration, data.clone(), 0.0).await;
    let lg1 = cpu_seconds(me);
    let wall = v["wall_secs"].as_f64().unwrap_or(1.0).max(1e-3);
    let p99 = v["latency"]["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    let ok = v["ok"].as_bool().unwrap_or(false);
    let loadgen_util = (lg1 - lg0) / wall;
    let broken = v["closed_sockets"].as_u64().unwrap_or(0) > 0;
    let pass = ok && p99 <= a.p99_ms;
    let m = v.as_object_mut().expect("object");
    m.insert("offered_deliveries_per_sec".into(), json!(dps));
    m.insert("pass".into(), json!(pass));
    m.insert("loadgen_cpu_util".into(), json!(loadgen_util));
    m.insert("loadgen_bound".into(), json!(loadgen_util > 0.9));
    eprintln!(
        "capacity: {:.0} deliveries/s offered ({:.1} msg/s): {} (p99 {:.1} ms, delivered {:.4}, server CPU {:.0}%, loadgen CPU {:.0}%)",
        dps,
        rate,
        if pass { "pass" } else { "fail" },
        p99,
        m["delivery_ratio"].as_f64().unwrap_or(0.0),
        m["server_cpu_util"].as_f64().unwrap_or(0.0) * 100.0,
        loadgen_util * 100.0
    );
    Step { pass, broken, v }
}

pub async fn scenario_capacity(rig: Rc<Rig>, a: CapacityArgs) -> Value {
    let groups = vec![(format!("{}-cap-{}", rig.common.prefix, a.n), a.n)];
    let (mut publishers, receivers, setup) = match setup_groups(&rig, &groups, true).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "capacity", "error": e}),
    };
    let mut results = Vec::new();
    'payloads: for &p in &a.payloads {
        let data = Rc::new(payload(p));
        let mut steps = Vec::new();
        let mut best: Option<(f64, Value)> = None;
        let mut lowest_fail: Option<f64> = None;
        let mut broken = false;
        // Doubling (halving from the start if even that fails).
        let mut r = a.start;
        loop {
            let s = step(&rig, std::slice::from_mut(&mut publishers[0]), &a, &data, r).await;
            steps.push(s.v.clone());
            if s.broken {
                broken = true;
                break;
            }
            if s.pass {
                best = Some((r, s.v));
                if lowest_fail.is_some() || r * 2.0 > a.max {
                    break;
                }
                r *= 2.0;
            } else {
                lowest_fail = Some(r);
                if best.is_some() || r / 2.0 < a.start / 8.0 {
                    break;
                }
                r /= 2.0;
            }
        }
        // Bisection.
        if !broken {
            if let (Some((lo, _)), Some(hi)) = (best.as_ref().map(|b| (b.0, ())), lowest_fail) {
                let (mut lo, mut hi) = (lo, hi);
                for _ in 0..a.bisect {
                    let mid = ((lo + hi) / 2.0).round();
                    let s = step(
                        &rig,
                        std::slice::from_mut(&mut publishers[0]),
                        &a,
                        &data,
                        mid,
                    )
                    .await;
                    steps.push(s.v.clone());
                    if s.broken {
                        broken = true;
                        break;
                    }
                    if s.pass {
                        lo = mid;
                        best = Some((mid, s.v));
                    } else {
                        hi = mid;
                    }
                }
                lowest_fail = Some(hi);
            }
        }
        let (capacity, at) = match &best {
            Some((r, v)) => (Some(*r), v.clone()),
            None => (None, Value::Null),
        };
        results.push(json!({
            "n": a.n,
            "payload": p,
            "capacity_offered_deliveries_per_sec": capacity,
            "capacity_delivered_per_sec": at["deliveries_per_sec"],
            "lowest_failing_offered": lowest_fail,
            "at_capacity": at,
            "search_capped_at_max": lowest_fail.is_none() && !broken,
            "loadgen_bound": steps.iter().any(|s| s["loadgen_bound"] == json!(true) && s["pass"] == json!(false)),
            "broken": broken,
            "p99_bound_ms": a.p99_ms,
            "steps": steps,
        }));
        if broken {
            break 'payloads;
        }
    }
    close_all(publishers).await;
    close_all(receivers).await;
    json!({"scenario": "capacity", "setup": setup, "results": results})
}
