//! Issue 13's bench rows: webhook delivery (docs/protocol.md §15).
//!
//! One WebSocket publishes N messages at a steady rate into a room. With `--listen`, this
//! process is also the webhook receiver the Worker's `WEBHOOK_URL` points at: it verifies
//! nothing, answers `200` at once, and counts events and batches, and the delay from a
//! message's publish to the batch that carries it arriving (the same clock as the
//! publish). Without `--listen` the same publishes run against a Worker with webhooks off,
//! so bench/run.mjs can put server CPU per publish side by side. With `--down-secs`, a last
//! phase publishes at the first rate while the receiver's port is closed (the outbox must
//! not slow the room down): ack latency and CPU per publish.

use std::collections::HashSet;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::transports::{parse_head, HttpStream};
use super::*;

#[derive(clap::Args, Clone)]
pub(crate) struct WebhookArgs {
    /// Publish rates, one measured phase each, messages per second.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rates: Vec<f64>,
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Address to receive webhooks on (the Worker's WEBHOOK_URL); empty: webhooks off.
    #[arg(long, default_value = "")]
    listen: String,
    /// Seconds of publishing with the receiver's port closed (0: no such phase).
    #[arg(long, default_value_t = 0.0)]
    down_secs: f64,
}

/// What the receiver saw for one phase (events are attributed by their `id`).
struct PhaseHooks {
    events: u64,
    batches: u64,
    /// Publish → receipt of the batch carrying it, µs.
    lat: Histogram<u64>,
    last_ns: u64,
}

#[derive(Default)]
struct Receiver {
    phases: RefCell<HashMap<usize, PhaseHooks>>,
    wids: RefCell<HashSet<String>>,
    duplicates: Cell<u64>,
    /// Events whose id this rig never sent, or malformed bodies.
    unknown: Cell<u64>,
    requests: Cell<u64>,
    batch_sizes: RefCell<Vec<u64>>,
}

impl Receiver {
    fn take(&self, rig: &Rig, body: &str) {
        let now = rig.now_ns();
        self.requests.set(self.requests.get() + 1);
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            self.unknown.set(self.unknown.get() + 1);
            return;
        };
        let events = v["events"].as_array().cloned().unwrap_or_default();
        self.batch_sizes.borrow_mut().push(events.len() as u64);
        let mut phases = self.phases.borrow_mut();
        let mut counted_batch: HashSet<usize> = HashSet::new();
        for e in &events {
            let wid = e["wid"].as_str().unwrap_or("").to_string();
            if !self.wids.borrow_mut().insert(wid) {
                self.duplicates.set(self.duplicates.get() + 1);
                continue;
            }
            let Some((phase, stream, k)) = e["id"].as_str().and_then(parse_id) else {
                self.unknown.set(self.unknown.get() + 1);
                continue;
            };
            let sent = rig
                .phases
                .borrow()
                .get(phase)
                .and_then(|p| p.sent.get(stream))
                .and_then(|s| s.get(k))
                .copied()
                .unwrap_or(0);
            let ph = phases.entry(phase).or_insert_with(|| PhaseHooks {
                events: 0,
                batches: 0,
                lat: hist(),
                last_ns: now,
            });
            ph.events += 1;
            ph.last_ns = now;
            if counted_batch.insert(phase) {
                ph.batches += 1;
            }
            if sent > 0 {
                let _ = ph.lat.record((now.saturating_sub(sent) / 1000).max(1));
            }
        }
    }

    fn events(&self, phase: usize) -> u64 {
        self.phases.borrow().get(&phase).map_or(0, |p| p.events)
    }
}

/// One receiver connection: requests in a row (keep-alive), each answered 200 at once.
async fn serve_conn(rig: Rc<Rig>, recv: Rc<Receiver>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut http = HttpStream::from_tcp(tcp);
    loop {
        let head = match http.read_head_text().await {
            Ok(Some(h)) => h,
            _ => return,
        };
        let (_, headers) = parse_head(&head);
        http.start_body(&headers);
        let Ok(body) = http.read_body().await else {
            return;
        };
        recv.take(&rig, &body);
        if http
            .tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

struct Listening {
    accept: JoinHandle<()>,
    conns: Rc<RefCell<Vec<JoinHandle<()>>>>,
}

async fn listen(rig: &Rc<Rig>, recv: &Rc<Receiver>, addr: &str) -> Result<Listening, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    let conns: Rc<RefCell<Vec<JoinHandle<()>>>> = Rc::default();
    let (rig, recv, c) = (rig.clone(), recv.clone(), conns.clone());
    let accept = tokio::task::spawn_local(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.borrow_mut().push(tokio::task::spawn_local(serve_conn(
                rig.clone(),
                recv.clone(),
                tcp,
            )));
        }
    });
    Ok(Listening { accept, conns })
}

impl Listening {
    /// Closes the port and every connection (the receiver goes down).
    fn close(self) {
        self.accept.abort();
        for c in self.conns.borrow_mut().drain(..) {
            c.abort();
        }
    }
}

/// One phase: `rate × secs` publishes, then every ack, then (receiver up) every event.
async fn hook_phase(
    rig: &Rc<Rig>,
    publisher: &mut Conn,
    recv: Option<&Rc<Receiver>>,
    rate: f64,
    secs: f64,
    data: Rc<String>,
) -> Value {
    let phase = rig.new_phase(1);
    let frames = ((rate * secs).round() as usize).max(1);
    let plan = PubPlan {
        phase,
        stream: 0,
        frames,
        rate,
        data,
        dup_ratio: 0.0,
        offset: Duration::ZERO,
        start: Instant::now() + Duration::from_millis(5),
        ephemeral: false,
    };
    rig.expected.borrow_mut().insert((0, phase), frames as u64);
    let cpu0 = rig.cpu();
    let t0 = Instant::now();
    let start_ns = rig.now_ns();
    let out = publish_open_loop(rig, publisher, &plan).await;
    let acked = drain(rig, phase, 0, frames as u64).await;
    let acked_at = t0.elapsed();
    let mut all_events = true;
    if let Some(r) = recv {
        let deadline = Instant::now() + Duration::from_secs_f64(rig.common.drain_timeout);
        while r.events(phase) < out.unique as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        all_events = r.events(phase) >= out.unique as u64;
    }
    let wall = t0.elapsed();
    let cpu1 = rig.cpu();
    let cpu_s = cpu1 - cpu0;
    let phases = rig.phases.borrow();
    let ph = &phases[phase];
    let mut v = json!({
        "rate": rate,
        "messages": out.unique,
        "acks": ph.acks,
        "server_errors": ph.server_errors,
        "ack_latency": pct(&ph.ack_lat),
        "send_lag_max_ms": out.max_lag_ns as f64 / 1e6,
        "acked_secs": acked_at.as_secs_f64(),
        "wall_secs": wall.as_secs_f64(),
        "server_cpu_secs": cpu_s,
        "server_cpu_util": cpu_s / wall.as_secs_f64(),
        "cpu_us_per_publish": cpu_s * 1e6 / frames as f64,
        "server_rss_kib": rig.rss(),
    });
    let m = v.as_object_mut().expect("object");
    let mut ok = acked && ph.acks == frames as u64 && ph.server_errors == 0 && out.send_errors == 0;
    if let Some(r) = recv {
        let hooks = r.phases.borrow();
        let h = hooks.get(&phase);
        let events = h.map_or(0, |h| h.events);
        let batches = h.map_or(0, |h| h.batches);
        // From the phase's first publish to the last event's arrival.
        let span = h
            .map_or(0.0, |h| (h.last_ns.saturating_sub(start_ns)) as f64 / 1e9)
            .max(1e-3);
        m.insert("webhooks".into(), json!(true));
        m.insert("events".into(), json!(events));
        m.insert("batches".into(), json!(batches));
        m.insert("events_per_sec".into(), json!(events as f64 / span));
        m.insert("batches_per_sec".into(), json!(batches as f64 / span));
        m.insert(
            "events_per_batch".into(),
            json!(events as f64 / batches.max(1) as f64),
        );
        m.insert("delivery_span_secs".into(), json!(span));
        m.insert(
            "webhook_latency".into(),
            h.map_or(Value::Null, |h| pct(&h.lat)),
        );
        m.insert("all_events".into(), json!(all_events));
        ok &= all_events;
    }
    m.insert("ok".into(), json!(ok));
    v
}

/// Scenario `webhooks`.
pub(crate) async fn scenario_webhooks(rig: Rc<Rig>, a: WebhookArgs) -> Value {
    let room = format!("{}-hooks", rig.common.prefix);
    let recv: Option<Rc<Receiver>> = (!a.listen.is_empty()).then(Rc::default);
    let mut listening = match &recv {
        Some(r) => match listen(&rig, r, &a.listen).await {
            Ok(l) => Some(l),
            Err(e) => return json!({"scenario": "webhooks", "error": e}),
        },
        None => None,
    };
    let (mut publisher, _) = match connect(&rig, &room, "pub", 0).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "webhooks", "error": format!("publisher: {e}")}),
    };
    settle(Duration::from_secs(5)).await;
    let data = Rc::new(payload(a.payload));
    let mut results = Vec::new();
    for &rate in &a.rates {
        if a.warmup > 0.0 {
            let _ = hook_phase(
                &rig,
                &mut publisher,
                recv.as_ref(),
                rate,
                a.warmup,
                data.clone(),
            )
            .await;
        }
        let mut v = hook_phase(
            &rig,
            &mut publisher,
            recv.as_ref(),
            rate,
            a.duration,
            data.clone(),
        )
        .await;
        v.as_object_mut()
            .expect("object")
            .insert("phase".into(), json!("up"));
        results.push(v);
    }
    if a.down_secs > 0.0 {
        if let Some(l) = listening.take() {
            l.close();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rate = a.rates.first().copied().unwrap_or(200.0);
        let mut v = hook_phase(&rig, &mut publisher, None, rate, a.down_secs, data.clone()).await;
        let m = v.as_object_mut().expect("object");
        m.insert("phase".into(), json!("receiver_down"));
        m.insert("webhooks".into(), json!(recv.is_some()));
        results.push(v);
    }
    let pending = room_info(&rig, &room).await;
    let status = webhook_status(&rig, &room).await;
    if let Some(l) = listening.take() {
        l.close();
    }
    close_all(vec![publisher]).await;
    let mut out = json!({
        "scenario": "webhooks",
        "webhooks": recv.is_some(),
        "results": results,
        "room_info_connections": pending.as_ref().map(|v| v["connections"].clone()),
        "webhook_status": status,
    });
    if let Some(r) = &recv {
        let m = out.as_object_mut().expect("object");
        m.insert("receiver_requests".into(), json!(r.requests.get()));
        m.insert("duplicate_events".into(), json!(r.duplicates.get()));
        m.insert("unknown_events".into(), json!(r.unknown.get()));
        let sizes = r.batch_sizes.borrow();
        m.insert("largest_batch".into(), json!(sizes.iter().max()));
    }
    out
}

/// `GET /v1/rooms/{room}/webhooks` (server auth), the room's outbox status.
async fn webhook_status(rig: &Rig, room: &str) -> Option<Value> {
    let c = &rig.common;
    if c.http_url.is_empty() || c.api_secret.is_empty() {
        return None;
    }
    let path = format!("/v1/rooms/{room}/webhooks");
    let addr = host_port(&c.http_url);
    let mut http = HttpStream::connect(&addr).await.ok()?;
    let sig = signature(&c.api_secret, "GET", &path, "", unix_now());
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nRoomcast-Signature: {sig}\r\nContent-Length: 0\r\n\r\n");
    let head = http.send(req.as_bytes()).await.ok()?;
    let body = http.read_body().await.ok()?;
    if head.status != 200 {
        return Some(json!({"status": head.status, "body": body}));
    }
    serde_json::from_str(&body).ok()
}
