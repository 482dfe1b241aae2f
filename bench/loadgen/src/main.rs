//! The load generator: opens authenticated WebSockets to a peer, publishes open-loop at
//! fixed rates (or drives the HTTP API closed-loop), and checks every delivery.
//!
//! * One process, one thread (pin it with `taskset`), one monotonic clock: a message's
//!   send time and its receive time come from the same `Instant` base, so latency is
//!   publish → receive with no clock skew.
//! * Every receiver checks that `seq` grows by exactly one (starting from its `welcome`),
//!   and counts its messages per phase; a lost, duplicated or reordered message makes the
//!   run fail (`ok: false`), it never makes it look faster.
//! * Server CPU is `utime + stime` of the server's process tree from `/proc`, read right
//!   before a phase's first publish and right after its last delivery.
//!
//! Every subcommand prints one JSON document on stdout; `bench/run.mjs` collects them.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use cost::cost;
use loadgen::{cpu_seconds, rss_kib, signature, unix_now, user_token};

mod capacity;
mod cost;
mod slow;
mod storm;
mod transports;
mod webhooks;

type Ws = WebSocketStream<TcpStream>;
type WsSink = SplitSink<Ws, Message>;
type WsStream = SplitStream<Ws>;

#[derive(Parser)]
#[command(about = "Roomcast benchmark load generator (see docs/performance.md)")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// WebSocket base, e.g. ws://127.0.0.1:8787
    #[arg(long)]
    ws_url: String,
    /// Socket path; `{room}` is replaced by the room name.
    #[arg(long, default_value = "/v1/rooms/{room}/ws")]
    ws_path: String,
    /// HTTP base for the server API, e.g. http://127.0.0.1:8787 (http subcommand only).
    #[arg(long, default_value = "")]
    http_url: String,
    /// HS256 secret for user tokens.
    #[arg(long, env = "BENCH_JWT_SECRET")]
    jwt_secret: String,
    /// HMAC secret for `Roomcast-Signature` (http subcommand only).
    #[arg(long, env = "BENCH_API_SECRET", default_value = "")]
    api_secret: String,
    /// PID of the server (its whole process tree is accounted); 0 = no CPU/RSS readings.
    #[arg(long, default_value_t = 0)]
    server_pid: u32,
    /// Where the token rides: `header` (Authorization: Bearer) or `protocol`.
    #[arg(long, default_value = "header")]
    auth: String,
    /// Prefix for room names, so runs never share rooms.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds to wait for the last deliveries of a phase before declaring them lost.
    #[arg(long, default_value_t = 20.0)]
    drain_timeout: f64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Scenario 1 + 6: ramp N sockets into one room; then idle (eviction) and wake.
    Ramp {
        #[arg(long, default_value_t = 2000)]
        n: usize,
        /// Idle seconds after the ramp before the wake-up publish (0 = skip 6).
        #[arg(long, default_value_t = 13.0)]
        idle_secs: f64,
    },
    /// Scenario 2: 1 publisher → N receivers in one room, open loop.
    Fanout {
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        sizes: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "100,1024")]
        payloads: Vec<usize>,
        /// Target deliveries per second; the publish rate is this ÷ N (capped by max-rate).
        #[arg(long, default_value_t = 50_000.0)]
        deliveries_per_sec: f64,
        #[arg(long, default_value_t = 2000.0)]
        max_rate: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Scenario 2d: fan-out 1 → N, durable then ephemeral publishes (contract v1.1 §B).
    Ephemeral {
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        #[arg(long, default_value_t = 20_000.0)]
        deliveries_per_sec: f64,
        #[arg(long, default_value_t = 2000.0)]
        max_rate: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Scenario 7: one reader stops reading while others keep up (contract v1.1 §C).
    Slow(slow::SlowArgs),
    /// Scenario 8: deploy storm — workerd restarts under N sockets with traffic flowing.
    Storm(storm::StormArgs),
    /// Scenario 2b: the highest offered fan-out rate a peer sustains (search).
    Capacity(capacity::CapacityArgs),
    /// Issue 12: fan-out 1 → N to Server-Sent Event streams (or WebSockets, to compare).
    Sse(transports::SseArgs),
    /// Issue 12: clients long-polling in a loop while messages flow.
    Poll(transports::PollArgs),
    /// Issue 13: webhook delivery to a receiver in this process (or webhooks off).
    Webhooks(webhooks::WebhookArgs),
    /// Scenario 3: many rooms in parallel, one publisher per room.
    Rooms {
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Sockets per room (one of them publishes).
        #[arg(long, default_value_t = 20)]
        per_room: usize,
        #[arg(long, default_value_t = 10.0)]
        rate_per_room: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// Scenario 4: signed HTTP publishes (closed loop) into rooms with N sockets.
    Http {
        #[arg(long, value_delimiter = ',', default_value = "0,100,1000")]
        sizes: Vec<usize>,
        /// Requests in flight (one keep-alive connection each).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// Scenario 5: publish at a fixed rate with a share of repeated event ids.
    Dedup {
        #[arg(long, default_value_t = 10)]
        receivers: usize,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, value_delimiter = ',', default_value = "0,0.5")]
        ratios: Vec<f64>,
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
}

// ---------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------

fn hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One measured (or warm-up) interval. Message ids are `b<phase>.<stream>.<k>`.
struct Phase {
    /// Send time (ns since the rig's epoch) per stream per k; 0 = not sent (yet).
    sent: Vec<Vec<u64>>,
    /// seq acknowledged for each original publish, per stream per k (dedup checks).
    acked_seq: Vec<Vec<u64>>,
    /// Publish → receive latency per delivery, µs.
    lat: Histogram<u64>,
    /// Publish → ack latency per publish frame, µs.
    ack_lat: Histogram<u64>,
    delivered: u64,
    acks: u64,
    dup_acks: u64,
    /// Acks that contradict the expectation (wrong duplicate flag or seq).
    ack_errors: u64,
    /// `error` frames received for this phase's publishes.
    server_errors: u64,
    /// Deliveries marked `ephemeral` (contract v1.1 §B).
    ephemeral_delivered: u64,
    /// Deliveries of a stream's last message: an ephemeral phase has drained when every
    /// receiver has the last one (conflation may drop earlier ones, never the latest).
    finals: u64,
}

impl Phase {
    fn new(streams: usize) -> Self {
        Phase {
            sent: vec![Vec::new(); streams],
            acked_seq: vec![Vec::new(); streams],
            lat: hist(),
            ack_lat: hist(),
            delivered: 0,
            acks: 0,
            dup_acks: 0,
            ack_errors: 0,
            server_errors: 0,
            ephemeral_delivered: 0,
            finals: 0,
        }
    }
}

/// A publish frame waiting for its ack (acks come back in send order on one socket).
struct Pending {
    sent: u64,
    phase: usize,
    stream: usize,
    k: usize,
    dup: bool,
}

/// Per-socket state, owned by the socket's reader task and inspected by the checks.
#[derive(Default)]
struct ConnState {
    /// The group (room index) this socket belongs to.
    group: usize,
    /// Last `seq` seen (from `welcome`, then from each message).
    last_seq: u64,
    /// Messages received per phase.
    counts: Vec<u64>,
    /// Messages whose `seq` was not `last_seq + 1`.
    order_errors: u64,
    /// Messages with an id this rig never sent.
    unknown: u64,
    /// Why the socket stopped, if it did.
    closed: Option<String>,
    /// Publishes in flight on this socket.
    fifo: VecDeque<Pending>,
    /// Last ephemeral message seen per stream, as (phase, k): conflation may skip
    /// messages of a stream but must never repeat or reorder them.
    ephemeral_last: Vec<Option<(usize, usize)>>,
}

struct Rig {
    epoch: Instant,
    common: Common,
    phases: RefCell<Vec<Phase>>,
    conns: RefCell<Vec<Rc<RefCell<ConnState>>>>,
    /// Unique messages published per (group, phase): what each receiver must get.
    expected: RefCell<HashMap<(usize, usize), u64>>,
    /// First few problems, for the report.
    problems: RefCell<Vec<String>>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    duplicate: Option<bool>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    /// `true` on ephemeral messages and their acks (contract v1.1 §B): no `seq`.
    #[serde(default)]
    ephemeral: Option<bool>,
}

fn parse_frames(text: &str) -> Vec<Frame<'_>> {
    let t = text.trim_start();
    if t.starts_with('[') {
        serde_json::from_str::<Vec<Frame>>(t).unwrap_or_default()
    } else if t.starts_with('{') {
        serde_json::from_str::<Frame>(t)
            .map(|f| vec![f])
            .unwrap_or_default()
    } else {
        Vec::new() // "pong" and other non-JSON text
    }
}

/// `b<phase>.<stream>.<k>` → (phase, stream, k).
fn parse_id(id: &str) -> Option<(usize, usize, usize)> {
    let rest = id.strip_prefix('b')?;
    let mut it = rest.split('.');
    let p = it.next()?.parse().ok()?;
    let s = it.next()?.parse().ok()?;
    let k = it.next()?.parse().ok()?;
    Some((p, s, k))
}

fn bench_id(phase: usize, stream: usize, k: usize) -> String {
    format!("b{phase}.{stream}.{k}")
}

/// The `data` value of a publish: a JSON object of exactly `size` bytes.
fn payload(size: usize) -> String {
    let pad = size.saturating_sub(10).max(1);
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad))
}

impl Rig {
    fn new(common: Common) -> Rc<Self> {
        Rc::new(Rig {
            epoch: Instant::now(),
            common,
            phases: RefCell::new(Vec::new()),
            conns: RefCell::new(Vec::new()),
            expected: RefCell::new(HashMap::new()),
            problems: RefCell::new(Vec::new()),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn problem(&self, p: String) {
        let mut v = self.problems.borrow_mut();
        if v.len() < 20 {
            v.push(p);
        }
    }

    fn new_phase(&self, streams: usize) -> usize {
        let mut phases = self.phases.borrow_mut();
        phases.push(Phase::new(streams));
        phases.len() - 1
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(self.common.server_pid)
    }

    fn rss(&self) -> u64 {
        rss_kib(self.common.server_pid)
    }

    /// Handles one text message on a socket.
    fn on_text(&self, conn: &RefCell<ConnState>, text: &str) {
        let now = self.now_ns();
        for f in parse_frames(text) {
            match f.ty.as_ref() {
                "message" => self.on_message(conn, &f, now),
                "ack" => self.on_ack(conn, &f, now),
                "error" => {
                    let pending = conn.borrow_mut().fifo.pop_front();
                    if let Some(p) = pending {
                        if let Some(ph) = self.phases.borrow_mut().get_mut(p.phase) {
                            ph.server_errors += 1;
                        }
                    }
                    self.problem(format!(
                        "server error frame: {} (id {:?})",
                        f.code.as_deref().unwrap_or("?"),
                        f.id.as_deref()
                    ));
                }
                _ => {} // presence, welcome (handled at connect), anything else
            }
        }
    }

    fn on_message(&self, conn: &RefCell<ConnState>, f: &Frame, now: u64) {
        let mut c = conn.borrow_mut();
        let ephemeral = f.ephemeral == Some(true);
        if ephemeral {
            // No `seq` (contract v1.1 §B); checked per stream below.
        } else if let Some(seq) = f.seq {
            if seq != c.last_seq + 1 {
                c.order_errors += 1;
                drop(c);
                self.problem(format!(
                    "order: expected seq {} got {seq}",
                    conn.borrow().last_seq + 1
                ));
                c = conn.borrow_mut();
            }
            c.last_seq = seq;
        } else {
            c.order_errors += 1;
        }
        let Some((phase, stream, k)) = f.id.as_deref().and_then(parse_id) else {
            c.unknown += 1;
            return;
        };
        if ephemeral {
            if c.ephemeral_last.len() <= stream {
                c.ephemeral_last.resize(stream + 1, None);
            }
            if matches!(c.ephemeral_last[stream], Some((p, last)) if p == phase && k <= last) {
                c.order_errors += 1;
                drop(c);
                self.problem(format!(
                    "ephemeral order: b{phase}.{stream}.{k} after a later one"
                ));
                c = conn.borrow_mut();
            }
            c.ephemeral_last[stream] = Some((phase, k));
        }
        if c.counts.len() <= phase {
            c.counts.resize(phase + 1, 0);
        }
        c.counts[phase] += 1;
        drop(c);
        cost(|k| k.deliveries += 1);
        let mut phases = self.phases.borrow_mut();
        let Some(ph) = phases.get_mut(phase) else {
            return;
        };
        ph.delivered += 1;
        if ephemeral {
            ph.ephemeral_delivered += 1;
        }
        if ph.sent.get(stream).is_some_and(|s| k + 1 == s.len()) {
            ph.finals += 1;
        }
        match ph.sent.get(stream).and_then(|s| s.get(k)).copied() {
            Some(sent) if sent > 0 => {
                let us = (now.saturating_sub(sent) / 1000).max(1);
                let _ = ph.lat.record(us);
            }
            _ => {
                drop(phases);
                conn.borrow_mut().unknown += 1;
            }
        }
    }

    fn on_ack(&self, conn: &RefCell<ConnState>, f: &Frame, now: u64) {
        let Some(p) = conn.borrow_mut().fifo.pop_front() else {
            self.problem("ack without a pending publish".into());
            return;
        };
        let mut phases = self.phases.borrow_mut();
        let Some(ph) = phases.get_mut(p.phase) else {
            return;
        };
        ph.acks += 1;
        let _ = ph
            .ack_lat
            .record((now.saturating_sub(p.sent) / 1000).max(1));
        let id_ok = f.id.as_deref() == Some(bench_id(p.phase, p.stream, p.k).as_str());
        let dup = f.duplicate.unwrap_or(false);
        if !dup {
            cost(|k| k.messages += 1);
        }
        let seq = f.seq.unwrap_or(0);
        let slot = ph.acked_seq.get_mut(p.stream).and_then(|s| s.get_mut(p.k));
        let mut bad = !id_ok || dup != p.dup;
        if let Some(slot) = slot {
            if p.dup {
                ph.dup_acks += 1;
                bad |= *slot != 0 && *slot != seq;
            } else {
                *slot = seq;
            }
        }
        if bad {
            ph.ack_errors += 1;
            drop(phases);
            self.problem(format!(
                "ack mismatch: id {:?} duplicate {dup} seq {seq}, expected id b{}.{}.{} duplicate {}",
                f.id.as_deref(),
                p.phase,
                p.stream,
                p.k,
                p.dup
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

struct Conn {
    sink: WsSink,
    state: Rc<RefCell<ConnState>>,
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// What a `welcome` frame tells a scenario.
struct Welcome {
    seq: u64,
    epoch: Option<String>,
    /// `"receipts":true`: the room wants `received` frames (contract v1.1 §C).
    receipts: bool,
    /// The `resume` object as sent (null when absent).
    resume: Value,
    /// Text messages read on the socket up to and including the one carrying `welcome`.
    messages: u64,
    /// The text message that carried `welcome` (an array may carry more frames after it,
    /// such as replayed messages).
    raw: String,
}

impl Welcome {
    fn from_text(text: &str, messages: u64) -> Option<Welcome> {
        let v: Value = serde_json::from_str(text.trim_start()).ok()?;
        let frame = match v {
            Value::Array(a) => a.into_iter().find(|f| f["type"] == "welcome")?,
            f if f["type"] == "welcome" => f,
            _ => return None,
        };
        Some(Welcome {
            seq: frame["seq"].as_u64().unwrap_or(0),
            epoch: frame["epoch"].as_str().map(str::to_string),
            receipts: frame["receipts"] == Value::Bool(true),
            resume: frame["resume"].clone(),
            messages,
            raw: text.to_string(),
        })
    }
}

/// Opens one socket to `room` as `user` and reads up to its `welcome`. `query` is added
/// to the socket path's query string. Returns the socket, its `welcome`, the handshake
/// time (TCP connect → welcome) and the socket's local address.
async fn open_socket(
    rig: &Rig,
    room: &str,
    user: &str,
    query: Option<&str>,
) -> Result<(Ws, Welcome, Duration, std::net::SocketAddr), String> {
    let c = &rig.common;
    let t0 = Instant::now();
    let mut path = c.ws_path.replace("{room}", room);
    if let Some(q) = query {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(q);
    }
    let url = format!("{}{}", c.ws_url, path);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let token = user_token(&c.jwt_secret, user, 3600);
    let (name, value) = if c.auth == "protocol" {
        (
            "Sec-WebSocket-Protocol",
            format!("roomcast.v1, roomcast.bearer.{token}"),
        )
    } else {
        ("Authorization", format!("Bearer {token}"))
    };
    req.headers_mut().insert(
        name,
        HeaderValue::from_str(&value).map_err(|e| e.to_string())?,
    );
    let tcp = TcpStream::connect(host_port(&c.ws_url))
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    // Small read buffers: thousands of sockets share one loadgen process.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (mut ws, _) = client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => format!("http {}", resp.status()),
            other => format!("handshake: {other}"),
        })?;
    cost(|k| {
        k.upgrades += 1;
        if !k.rooms.contains(room) {
            k.rooms.insert(room.to_string());
        }
    });
    let mut messages = 0u64;
    let (welcome, elapsed) = loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "no welcome within 30 s".to_string())?;
        match next {
            Some(Ok(Message::Text(t))) => {
                messages += 1;
                // The handshake ends when `welcome` arrives, not when it is parsed.
                let at = t0.elapsed();
                if let Some(w) = Welcome::from_text(&t, messages) {
                    break (w, at);
                }
            }
            Some(Ok(Message::Close(cf))) => return Err(format!("closed before welcome: {cf:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("before welcome: {e}")),
            None => return Err("eof before welcome".into()),
        }
    };
    Ok((ws, welcome, elapsed, local))
}

/// Opens one socket, waits for `welcome`, starts its reader task. Returns the connection
/// and the handshake time (TCP connect → welcome).
async fn connect(
    rig: &Rc<Rig>,
    room: &str,
    user: &str,
    group: usize,
) -> Result<(Conn, Duration), String> {
    let (ws, welcome, elapsed, _) = open_socket(rig, room, user, None).await?;
    let welcome_seq = welcome.seq;
    let (sink, stream) = ws.split();
    let state = Rc::new(RefCell::new(ConnState {
        group,
        last_seq: welcome_seq,
        ..Default::default()
    }));
    rig.conns.borrow_mut().push(state.clone());
    tokio::task::spawn_local(read_loop(rig.clone(), stream, state.clone()));
    Ok((Conn { sink, state }, elapsed))
}

async fn read_loop(rig: Rc<Rig>, mut stream: WsStream, state: Rc<RefCell<ConnState>>) {
    while let Some(m) = stream.next().await {
        match m {
            Ok(Message::Text(t)) => {
                FRAMES_SEEN.with(|c| c.set(c.get() + 1));
                rig.on_text(&state, &t);
            }
            Ok(Message::Close(cf)) => {
                state.borrow_mut().closed = Some(format!("close frame {cf:?}"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                state.borrow_mut().closed = Some(format!("error {e}"));
                return;
            }
        }
    }
    state
        .borrow_mut()
        .closed
        .get_or_insert_with(|| "eof".into());
}

struct Ramp {
    conns: Vec<Option<Conn>>,
    handshake: Histogram<u64>,
    failures: Vec<String>,
    elapsed: Duration,
}

/// Opens sockets `(room, user, group)` with bounded concurrency, in order of `specs`.
async fn connect_many(rig: &Rc<Rig>, specs: Vec<(String, String, usize)>) -> Ramp {
    let sem = Rc::new(Semaphore::new(rig.common.connect_concurrency.max(1)));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(specs.len());
    for (room, user, group) in specs {
        let sem = sem.clone();
        let rig = rig.clone();
        handles.push(tokio::task::spawn_local(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            connect(&rig, &room, &user, group).await
        }));
    }
    let mut out = Ramp {
        conns: Vec::new(),
        handshake: hist(),
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for h in handles {
        match h.await {
            Ok(Ok((conn, took))) => {
                let _ = out.handshake.record((took.as_micros() as u64).max(1));
                out.conns.push(Some(conn));
            }
            Ok(Err(e)) => {
                out.failures.push(e);
                out.conns.push(None);
            }
            Err(e) => {
                out.failures.push(format!("task: {e}"));
                out.conns.push(None);
            }
        }
    }
    out.elapsed = t0.elapsed();
    out
}

thread_local! {
    /// Text messages received by all sockets so far (setup traffic included).
    static FRAMES_SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Waits until setup traffic (presence joins, welcomes) stops arriving: three quiet
/// 100 ms polls in a row, or `max`.
async fn settle(max: Duration) {
    let seen = || FRAMES_SEEN.with(|c| c.get());
    let deadline = Instant::now() + max;
    let mut quiet = 0;
    let mut last = seen();
    while Instant::now() < deadline && quiet < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen();
        if now == last {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------

struct PubPlan {
    phase: usize,
    stream: usize,
    /// Publish frames to send (duplicates included).
    frames: usize,
    rate: f64,
    data: Rc<String>,
    /// Share of frames that repeat the previous unique id.
    dup_ratio: f64,
    /// Offset of this stream's schedule, so parallel streams do not fire in lockstep.
    offset: Duration,
    start: Instant,
    /// Ephemeral publishes (contract v1.1 §B, event `cursor`) instead of durable ones.
    ephemeral: bool,
}

struct PubOutcome {
    unique: usize,
    max_lag_ns: u64,
    send_errors: usize,
}

/// Sends `plan.frames` publishes on one socket at a fixed rate (open loop: a slow server
/// does not slow the schedule down; lateness is reported as `send_lag`).
async fn publish_open_loop(rig: &Rig, conn: &mut Conn, plan: &PubPlan) -> PubOutcome {
    let unique_total = unique_count(plan.frames, plan.dup_ratio);
    {
        let mut phases = rig.phases.borrow_mut();
        let ph = &mut phases[plan.phase];
        ph.sent[plan.stream] = vec![0; unique_total];
        ph.acked_seq[plan.stream] = vec![0; unique_total];
    }
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let first = plan.start + plan.offset;
    let mut out = PubOutcome {
        unique: 0,
        max_lag_ns: 0,
        send_errors: 0,
    };
    let mut k = 0usize;
    for j in 0..plan.frames {
        let intended = first + interval.mul_f64(j as f64);
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(intended.into()).await;
        } else {
            out.max_lag_ns = out.max_lag_ns.max((now - intended).as_nanos() as u64);
        }
        let dup = j > 0 && is_dup(j, plan.dup_ratio);
        let this_k = if dup { k - 1 } else { k };
        let id = bench_id(plan.phase, plan.stream, this_k);
        let frame = if plan.ephemeral {
            format!(
                r#"{{"type":"publish","ephemeral":true,"id":"{id}","event":"cursor","data":{}}}"#,
                plan.data
            )
        } else {
            format!(
                r#"{{"type":"publish","id":"{id}","event":"bench","data":{}}}"#,
                plan.data
            )
        };
        let sent = rig.now_ns();
        if !dup {
            rig.phases.borrow_mut()[plan.phase].sent[plan.stream][this_k] = sent;
            k += 1;
        }
        conn.state.borrow_mut().fifo.push_back(Pending {
            sent,
            phase: plan.phase,
            stream: plan.stream,
            k: this_k,
            dup,
        });
        cost(|k| k.ws_in += 1);
        if let Err(e) = conn.sink.send(Message::text(frame)).await {
            out.send_errors += 1;
            rig.problem(format!("send: {e}"));
            break;
        }
    }
    out.unique = k;
    out
}

fn is_dup(j: usize, ratio: f64) -> bool {
    ratio > 0.0 && ((j + 1) as f64 * ratio).floor() > (j as f64 * ratio).floor()
}

fn unique_count(frames: usize, ratio: f64) -> usize {
    (0..frames)
        .filter(|&j| !(j > 0 && is_dup(j, ratio)))
        .count()
}

/// Waits until a phase has `deliveries` deliveries and `acks` acks, or the drain timeout.
async fn drain(rig: &Rig, phase: usize, deliveries: u64, acks: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(rig.common.drain_timeout);
    loop {
        {
            let phases = rig.phases.borrow();
            let ph = &phases[phase];
            if ph.delivered >= deliveries && ph.acks + ph.server_errors >= acks {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// [`drain`] for an ephemeral phase: done when every delivery arrived, or when every
/// receiver has the last message of each stream it receives (`finals`), and every ack.
async fn drain_ephemeral(rig: &Rig, phase: usize, deliveries: u64, finals: u64, acks: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(rig.common.drain_timeout);
    loop {
        {
            let phases = rig.phases.borrow();
            let ph = &phases[phase];
            if (ph.delivered >= deliveries || ph.finals >= finals)
                && ph.acks + ph.server_errors >= acks
            {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn pct(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| (us as f64) / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Per-receiver verification of one phase: exact counts, no order errors, still open.
struct Check {
    ok: bool,
    expected: u64,
    received: u64,
    short_receivers: usize,
    over_receivers: usize,
    order_errors: u64,
    unknown: u64,
    closed: usize,
}

fn check_phase(rig: &Rig, phase: usize, publishers: &[Rc<RefCell<ConnState>>]) -> Check {
    let expected_map = rig.expected.borrow();
    let mut ch = Check {
        ok: true,
        expected: 0,
        received: 0,
        short_receivers: 0,
        over_receivers: 0,
        order_errors: 0,
        unknown: 0,
        closed: 0,
    };
    for c in rig.conns.borrow().iter() {
        if publishers.iter().any(|p| Rc::ptr_eq(p, c)) {
            continue;
        }
        let c = c.borrow();
        let Some(&want) = expected_map.get(&(c.group, phase)) else {
            continue;
        };
        let got = c.counts.get(phase).copied().unwrap_or(0);
        ch.expected += want;
        ch.received += got.min(want);
        if got < want {
            ch.short_receivers += 1;
        }
        if got > want {
            ch.over_receivers += 1;
        }
        ch.order_errors += c.order_errors;
        ch.unknown += c.unknown;
        if c.closed.is_some() {
            ch.closed += 1;
        }
    }
    ch.ok = ch.short_receivers == 0
        && ch.over_receivers == 0
        && ch.order_errors == 0
        && ch.unknown == 0
        && ch.closed == 0;
    ch
}

fn check_json(ch: &Check) -> Value {
    json!({
        "ok": ch.ok,
        "deliveries_expected": ch.expected,
        "deliveries": ch.received,
        "delivery_ratio": if ch.expected == 0 { 1.0 } else { ch.received as f64 / ch.expected as f64 },
        "short_receivers": ch.short_receivers,
        "over_receivers": ch.over_receivers,
        "order_errors": ch.order_errors,
        "unknown_messages": ch.unknown,
        "closed_sockets": ch.closed,
    })
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

fn ramp_json(r: &Ramp, n: usize) -> Value {
    json!({
        "sockets": n,
        "connected": r.conns.iter().filter(|c| c.is_some()).count(),
        "failures": r.failures.len(),
        "failure_samples": r.failures.iter().take(5).collect::<Vec<_>>(),
        "secs": r.elapsed.as_secs_f64(),
        "handshakes_per_sec": (n - r.failures.len()) as f64 / r.elapsed.as_secs_f64(),
        "handshake": pct(&r.handshake),
    })
}

async fn scenario_ramp(rig: Rc<Rig>, n: usize, idle_secs: f64) -> Value {
    let room = format!("{}-ramp", rig.common.prefix);
    let rss0 = rig.rss();
    let cpu0 = rig.cpu();
    let specs = (0..n).map(|i| (room.clone(), format!("u{i}"), 0)).collect();
    eprintln!("@phase ramp start");
    let mut r = connect_many(&rig, specs).await;
    let cpu1 = rig.cpu();
    eprintln!("@phase ramp end");
    settle(Duration::from_secs(30)).await;
    let rss1 = rig.rss();
    let connected = r.conns.iter().filter(|c| c.is_some()).count();
    let mut out = json!({
        "scenario": "ramp",
        "ramp": ramp_json(&r, n),
        "server_cpu_secs": cpu1 - cpu0,
        "server_cpu_ms_per_handshake": (cpu1 - cpu0) * 1000.0 / connected.max(1) as f64,
        "rss_before_kib": rss0,
        "rss_connected_kib": rss1,
        "rss_per_socket_connected_kib": (rss1 as f64 - rss0 as f64) / connected.max(1) as f64,
    });
    if idle_secs > 0.0 && connected >= 2 {
        // An idle room is evicted (not billed) after about 10 s.
        cost(|k| k.idle_secs += (idle_secs - 10.0).max(0.0));
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        let rss2 = rig.rss();
        // Wake-up: one publish from the first socket; every other socket must get it.
        let mut conns: Vec<Conn> = r.conns.drain(..).flatten().collect();
        let mut publisher = conns.remove(0);
        let receivers = conns.len();
        let data = Rc::new(payload(100));
        let phase = rig.new_phase(1);
        {
            let mut phases = rig.phases.borrow_mut();
            phases[phase].sent[0] = vec![0; 1];
            phases[phase].acked_seq[0] = vec![0; 1];
        }
        rig.expected.borrow_mut().insert((0, phase), 1);
        let cpu2 = rig.cpu();
        let plan = PubPlan {
            phase,
            stream: 0,
            frames: 1,
            rate: 1.0,
            data,
            dup_ratio: 0.0,
            offset: Duration::ZERO,
            start: Instant::now(),
            ephemeral: false,
        };
        let t0 = Instant::now();
        publish_open_loop(&rig, &mut publisher, &plan).await;
        let drained = drain(&rig, phase, receivers as u64, 1).await;
        let wake_wall = t0.elapsed();
        let cpu3 = rig.cpu();
        let ch = check_phase(&rig, phase, &[publisher.state.clone()]);
        let wake = {
            let phases = rig.phases.borrow();
            let ph = &phases[phase];
            json!({
                "ok": ch.ok && drained && ph.acks == 1,
                "receivers": receivers,
                "delivery": check_json(&ch),
                "first_delivery_ms": ph.lat.min() as f64 / 1000.0,
                "latency": pct(&ph.lat),
                "ack_ms": ph.ack_lat.max() as f64 / 1000.0,
                "all_delivered_ms": wake_wall.as_secs_f64() * 1000.0,
                "server_cpu_secs": cpu3 - cpu2,
            })
        };
        let m = out.as_object_mut().expect("object");
        m.insert("idle_secs".into(), json!(idle_secs));
        m.insert("rss_idle_kib".into(), json!(rss2));
        m.insert(
            "rss_per_socket_idle_kib".into(),
            json!((rss2 as f64 - rss0 as f64) / connected as f64),
        );
        m.insert("wake".into(), wake);
        conns.push(publisher);
        close_all(conns).await;
    } else {
        close_all(r.conns.drain(..).flatten().collect()).await;
    }
    out
}

async fn close_all(conns: Vec<Conn>) {
    for mut c in conns {
        let _ = tokio::time::timeout(Duration::from_millis(50), c.sink.close()).await;
    }
}

/// Connects `groups[i].1` receivers plus one publisher into room `groups[i].0`.
/// Returns the publishers (one per group) and the receivers.
async fn setup_groups(
    rig: &Rc<Rig>,
    groups: &[(String, usize)],
    with_publisher: bool,
) -> Result<(Vec<Conn>, Vec<Conn>, Value), Value> {
    let mut specs = Vec::new();
    let mut user = 0usize;
    for (g, (room, n)) in groups.iter().enumerate() {
        let total = n + usize::from(with_publisher);
        for _ in 0..total {
            specs.push((room.clone(), format!("u{user}"), g));
            user += 1;
        }
    }
    let total = specs.len();
    let mut r = connect_many(rig, specs).await;
    let ramp = ramp_json(&r, total);
    if !r.failures.is_empty() {
        return Err(json!({"ok": false, "setup": ramp}));
    }
    settle(Duration::from_secs(60)).await;
    let mut publishers = Vec::new();
    let mut receivers = Vec::new();
    let mut it = r.conns.drain(..).flatten();
    for (_, n) in groups {
        if with_publisher {
            publishers.push(it.next().expect("publisher"));
        }
        for _ in 0..*n {
            receivers.push(it.next().expect("receiver"));
        }
    }
    Ok((publishers, receivers, ramp))
}

async fn scenario_fanout(
    rig: Rc<Rig>,
    sizes: Vec<usize>,
    payloads: Vec<usize>,
    dps: f64,
    max_rate: f64,
    duration: f64,
    warmup: f64,
) -> Value {
    let groups: Vec<(String, usize)> = sizes
        .iter()
        .map(|n| (format!("{}-fo-{n}", rig.common.prefix), *n))
        .collect();
    let (mut publishers, receivers, setup) = match setup_groups(&rig, &groups, true).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "fanout", "error": e}),
    };
    let mut results = Vec::new();
    for &p in &payloads {
        let data = Rc::new(payload(p));
        for (g, &n) in sizes.iter().enumerate() {
            let rate = (dps / n as f64).min(max_rate);
            let pubs = std::slice::from_mut(&mut publishers[g]);
            if warmup > 0.0 {
                let _ = run_phase_group(&rig, pubs, g, n, rate, warmup, data.clone(), 0.0).await;
            }
            let mut v = run_phase_group(&rig, pubs, g, n, rate, duration, data.clone(), 0.0).await;
            let m = v.as_object_mut().expect("object");
            m.insert("n".into(), json!(n));
            m.insert("payload".into(), json!(p));
            results.push(v);
        }
    }
    close_all(publishers).await;
    close_all(receivers).await;
    json!({"scenario": "fanout", "setup": setup, "results": results})
}

/// The storage totals `GET /v1/rooms/{room}` reports (`"storage":{"rows_read":N,
/// "rows_written":M}`), as (read, written).
fn storage_rows(info: &Option<Value>) -> Option<(u64, u64)> {
    let s = info.as_ref()?.get("storage")?;
    Some((s["rows_read"].as_u64()?, s["rows_written"].as_u64()?))
}

/// Scenario 2d: fan-out 1 → N with durable publishes, then the same with ephemeral ones
/// (contract v1.1 §B) into the same room; storage rows per message from the room's own
/// `GET /v1/rooms/{room}` before and after each measured phase.
#[allow(clippy::too_many_arguments)]
async fn scenario_ephemeral(
    rig: Rc<Rig>,
    sizes: Vec<usize>,
    payload_size: usize,
    dps: f64,
    max_rate: f64,
    duration: f64,
    warmup: f64,
) -> Value {
    let groups: Vec<(String, usize)> = sizes
        .iter()
        .map(|n| (format!("{}-eph-{n}", rig.common.prefix), *n))
        .collect();
    let (mut publishers, receivers, setup) = match setup_groups(&rig, &groups, true).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "ephemeral", "error": e}),
    };
    let data = Rc::new(payload(payload_size));
    let mut results = Vec::new();
    for (g, &n) in sizes.iter().enumerate() {
        let rate = (dps / n as f64).min(max_rate);
        let mut per_group = vec![0usize; g + 1];
        per_group[g] = n;
        for ephemeral in [false, true] {
            let pubs = std::slice::from_mut(&mut publishers[g]);
            if warmup > 0.0 {
                let _ = run_phase_mapped(
                    &rig,
                    pubs,
                    &[g],
                    &per_group,
                    rate,
                    warmup,
                    data.clone(),
                    0.0,
                    ephemeral,
                )
                .await;
            }
            let before = room_info(&rig, &groups[g].0).await;
            let mut v = run_phase_mapped(
                &rig,
                pubs,
                &[g],
                &per_group,
                rate,
                duration,
                data.clone(),
                0.0,
                ephemeral,
            )
            .await;
            let after = room_info(&rig, &groups[g].0).await;
            let m = v.as_object_mut().expect("object");
            m.insert("n".into(), json!(n));
            m.insert("payload".into(), json!(payload_size));
            let messages = m["unique_messages"].as_u64().unwrap_or(0).max(1) as f64;
            let (b, a) = (storage_rows(&before), storage_rows(&after));
            m.insert("storage_before".into(), json!(b));
            m.insert("storage_after".into(), json!(a));
            if let (Some(b), Some(a)) = (b, a) {
                m.insert(
                    "rows_read_per_message".into(),
                    json!(a.0.saturating_sub(b.0) as f64 / messages),
                );
                m.insert(
                    "rows_written_per_message".into(),
                    json!(a.1.saturating_sub(b.1) as f64 / messages),
                );
            }
            results.push(v);
        }
    }
    close_all(publishers).await;
    close_all(receivers).await;
    json!({"scenario": "ephemeral", "setup": setup, "results": results})
}

/// `run_phase` for a single publisher whose receivers are group `g`.
#[allow(clippy::too_many_arguments)]
async fn run_phase_group(
    rig: &Rc<Rig>,
    publisher: &mut [Conn],
    g: usize,
    n: usize,
    rate: f64,
    secs: f64,
    data: Rc<String>,
    dup_ratio: f64,
) -> Value {
    let mut per_group = vec![0usize; g + 1];
    per_group[g] = n;
    run_phase_mapped(
        rig,
        publisher,
        &[g],
        &per_group,
        rate,
        secs,
        data,
        dup_ratio,
        false,
    )
    .await
}

/// Like `run_phase`, but stream `i` publishes into group `stream_groups[i]`.
#[allow(clippy::too_many_arguments)]
async fn run_phase_mapped(
    rig: &Rc<Rig>,
    publishers: &mut [Conn],
    stream_groups: &[usize],
    receivers_per_group: &[usize],
    rate_per_stream: f64,
    secs: f64,
    data: Rc<String>,
    dup_ratio: f64,
    ephemeral: bool,
) -> Value {
    let streams = publishers.len();
    let phase = rig.new_phase(streams);
    let frames = ((rate_per_stream * secs).round() as usize).max(1);
    let start = Instant::now() + Duration::from_millis(5);
    let pub_states: Vec<_> = publishers.iter().map(|p| p.state.clone()).collect();
    // Markers for bench/profile.mjs, which profiles exactly one phase.
    eprintln!("@phase {phase} start");
    let cpu0 = rig.cpu();
    let t0 = Instant::now();
    let mut outcomes = Vec::with_capacity(streams);
    {
        // Drive all publishers concurrently from this task.
        let futs = publishers.iter_mut().enumerate().map(|(stream, conn)| {
            let plan = PubPlan {
                phase,
                stream,
                frames,
                rate: rate_per_stream,
                data: data.clone(),
                dup_ratio,
                offset: Duration::from_secs_f64(stream as f64 / (rate_per_stream * streams as f64)),
                start,
                ephemeral,
            };
            let rig = rig.clone();
            async move { publish_open_loop(&rig, conn, &plan).await }
        });
        outcomes.extend(futures_util::future::join_all(futs).await);
    }
    let send_done = t0.elapsed();
    let mut want_deliveries = 0u64;
    let mut unique_total = 0u64;
    let mut max_lag = 0u64;
    let mut send_errors = 0usize;
    for (stream, out) in outcomes.iter().enumerate() {
        let g = stream_groups[stream];
        rig.expected
            .borrow_mut()
            .insert((g, phase), out.unique as u64);
        want_deliveries += out.unique as u64 * receivers_per_group[g] as u64;
        unique_total += out.unique as u64;
        max_lag = max_lag.max(out.max_lag_ns);
        send_errors += out.send_errors;
    }
    let frames_total = (frames * streams) as u64;
    let drained = if ephemeral {
        // Conflation (contract v1.1 §B) may replace a queued signal by a newer one, so
        // not every message reaches every receiver; the latest of each stream does.
        let finals: u64 = stream_groups
            .iter()
            .map(|&g| receivers_per_group[g] as u64)
            .sum();
        drain_ephemeral(rig, phase, want_deliveries, finals, frames_total).await
    } else {
        drain(rig, phase, want_deliveries, frames_total).await
    };
    let wall = t0.elapsed();
    let cpu1 = rig.cpu();
    eprintln!("@phase {phase} end");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ch = check_phase(rig, phase, &pub_states);
    let phases = rig.phases.borrow();
    let ph = &phases[phase];
    // A server without ephemeral messages stores and sequences them like any publish.
    let honoured = ph.ephemeral_delivered == ph.delivered;
    if ephemeral {
        // Fewer deliveries than published is conflation, not loss; more, a repeat, or
        // a reordering is still a failure.
        ch.ok = ch.over_receivers == 0
            && ch.order_errors == 0
            && ch.unknown == 0
            && ch.closed == 0
            && honoured;
        if !honoured {
            rig.problem(format!(
                "phase {phase}: {} of {} deliveries of ephemeral publishes were not marked ephemeral",
                ph.delivered - ph.ephemeral_delivered,
                ph.delivered
            ));
        }
    }
    let cpu_s = cpu1 - cpu0;
    let deliveries = ch.received;
    let ok = ch.ok
        && drained
        && ph.ack_errors == 0
        && ph.server_errors == 0
        && send_errors == 0
        && ph.acks == frames_total;
    let mut v = check_json(&ch);
    let m = v.as_object_mut().expect("object");
    m.insert("ok".into(), json!(ok));
    m.insert(
        "kind".into(),
        json!(if ephemeral { "ephemeral" } else { "durable" }),
    );
    if ephemeral {
        m.insert("ephemeral_deliveries".into(), json!(ph.ephemeral_delivered));
        m.insert("ephemeral_honoured".into(), json!(honoured));
        m.insert("conflated".into(), json!(ch.expected - ch.received));
    }
    m.insert("publish_frames".into(), json!(frames_total));
    m.insert("unique_messages".into(), json!(unique_total));
    m.insert("rate_per_stream".into(), json!(rate_per_stream));
    m.insert("streams".into(), json!(streams));
    m.insert("send_secs".into(), json!(send_done.as_secs_f64()));
    m.insert("wall_secs".into(), json!(wall.as_secs_f64()));
    m.insert("server_cpu_secs".into(), json!(cpu_s));
    m.insert("server_cpu_util".into(), json!(cpu_s / wall.as_secs_f64()));
    m.insert(
        "deliveries_per_cpu_sec".into(),
        if cpu_s > 0.0 {
            json!(deliveries as f64 / cpu_s)
        } else {
            Value::Null
        },
    );
    m.insert(
        "cpu_us_per_publish".into(),
        json!(cpu_s * 1e6 / frames_total as f64),
    );
    m.insert(
        "deliveries_per_sec".into(),
        json!(deliveries as f64 / wall.as_secs_f64()),
    );
    m.insert("latency".into(), pct(&ph.lat));
    m.insert("ack_latency".into(), pct(&ph.ack_lat));
    m.insert("acks".into(), json!(ph.acks));
    m.insert("duplicate_acks".into(), json!(ph.dup_acks));
    m.insert("ack_errors".into(), json!(ph.ack_errors));
    m.insert("server_errors".into(), json!(ph.server_errors));
    m.insert("send_lag_max_ms".into(), json!(max_lag as f64 / 1e6));
    m.insert("drained".into(), json!(drained));
    m.insert("server_rss_kib".into(), json!(rig.rss()));
    v
}

async fn scenario_rooms(
    rig: Rc<Rig>,
    rooms: usize,
    per_room: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    payload_size: usize,
) -> Value {
    let groups: Vec<(String, usize)> = (0..rooms)
        .map(|i| (format!("{}-rooms-{i}", rig.common.prefix), per_room - 1))
        .collect();
    let (mut publishers, receivers, setup) = match setup_groups(&rig, &groups, true).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "rooms", "error": e}),
    };
    let data = Rc::new(payload(payload_size));
    let stream_groups: Vec<usize> = (0..rooms).collect();
    let per_group = vec![per_room - 1; rooms];
    if warmup > 0.0 {
        let _ = run_phase_mapped(
            &rig,
            &mut publishers,
            &stream_groups,
            &per_group,
            rate,
            warmup,
            data.clone(),
            0.0,
            false,
        )
        .await;
    }
    let mut v = run_phase_mapped(
        &rig,
        &mut publishers,
        &stream_groups,
        &per_group,
        rate,
        duration,
        data,
        0.0,
        false,
    )
    .await;
    let m = v.as_object_mut().expect("object");
    m.insert("rooms".into(), json!(rooms));
    m.insert("per_room".into(), json!(per_room));
    m.insert("payload".into(), json!(payload_size));
    close_all(publishers).await;
    close_all(receivers).await;
    json!({"scenario": "rooms", "setup": setup, "results": [v]})
}

async fn scenario_dedup(
    rig: Rc<Rig>,
    receivers: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    ratios: Vec<f64>,
    payload_size: usize,
) -> Value {
    let groups = vec![(format!("{}-dedup", rig.common.prefix), receivers)];
    let (mut publishers, recv, setup) = match setup_groups(&rig, &groups, true).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "dedup", "error": e}),
    };
    let data = Rc::new(payload(payload_size));
    let mut results = Vec::new();
    for &ratio in &ratios {
        if warmup > 0.0 {
            let _ = run_phase_mapped(
                &rig,
                &mut publishers,
                &[0],
                &[receivers],
                rate,
                warmup,
                data.clone(),
                ratio,
                false,
            )
            .await;
        }
        let mut v = run_phase_mapped(
            &rig,
            &mut publishers,
            &[0],
            &[receivers],
            rate,
            duration,
            data.clone(),
            ratio,
            false,
        )
        .await;
        let m = v.as_object_mut().expect("object");
        m.insert("dup_ratio".into(), json!(ratio));
        m.insert("receivers".into(), json!(receivers));
        results.push(v);
    }
    close_all(publishers).await;
    close_all(recv).await;
    json!({"scenario": "dedup", "setup": setup, "results": results})
}

// --- HTTP --------------------------------------------------------------------------------

struct HttpConn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(addr: &str) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(HttpConn {
            tcp,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads one response (Content-Length framed).
    async fn roundtrip(&mut self, req: &[u8]) -> Result<(u16, String), String> {
        self.tcp.write_all(req).await.map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = self.tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        while self.buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = self.tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed in body".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).to_string();
        self.buf.drain(..head_end + len);
        Ok((status, body))
    }
}

/// `GET /v1/rooms/{room}`, signed (docs/protocol.md §7): the room's own report, or
/// `None` when the peer has no such route or the rig has no API secret.
async fn room_info(rig: &Rig, room: &str) -> Option<Value> {
    let c = &rig.common;
    if c.http_url.is_empty() || c.api_secret.is_empty() {
        return None;
    }
    let path = format!("/v1/rooms/{room}");
    let addr = host_port(&c.http_url);
    let mut conn = HttpConn::open(&addr).await.ok()?;
    let sig = signature(&c.api_secret, "GET", &path, "", unix_now());
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nRoomcast-Signature: {sig}\r\nContent-Length: 0\r\n\r\n");
    match conn.roundtrip(req.as_bytes()).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

struct HttpOutcome {
    ok: u64,
    failed: u64,
    lat: Histogram<u64>,
}

/// Closed loop: `concurrency` keep-alive connections each send signed publishes back to
/// back until `secs` have passed.
async fn http_phase(
    rig: &Rc<Rig>,
    room: &str,
    concurrency: usize,
    secs: f64,
    data: Rc<String>,
) -> (usize, HttpOutcome, Duration) {
    let phase = rig.new_phase(1);
    cost(|k| {
        k.rooms.insert(room.to_string());
    });
    let path = format!("/v1/rooms/{room}/messages");
    let addr = host_port(&rig.common.http_url);
    let next = Rc::new(Cell::new(0usize));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (rig, path, addr, next, data) = (
            rig.clone(),
            path.clone(),
            addr.clone(),
            next.clone(),
            data.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            let mut out = HttpOutcome {
                ok: 0,
                failed: 0,
                lat: hist(),
            };
            let mut conn = match HttpConn::open(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    rig.problem(format!("http connect: {e}"));
                    out.failed += 1;
                    return out;
                }
            };
            while Instant::now() < deadline {
                let k = next.get();
                next.set(k + 1);
                let id = bench_id(phase, 0, k);
                let body = format!(r#"{{"id":"{id}","event":"bench","data":{data}}}"#);
                let sig = signature(&rig.common.api_secret, "POST", &path, &body, unix_now());
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nRoomcast-Signature: {sig}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let sent = rig.now_ns();
                {
                    let mut phases = rig.phases.borrow_mut();
                    let s = &mut phases[phase].sent[0];
                    if s.len() <= k {
                        s.resize(k + 1, 0);
                    }
                    s[k] = sent;
                }
                let answer = conn.roundtrip(req.as_bytes()).await;
                cost(|k| k.http_requests += 1);
                match answer {
                    Ok((200, resp)) if !resp.contains("\"duplicate\":true") => {
                        cost(|k| k.messages += 1);
                        out.ok += 1;
                        let _ = out
                            .lat
                            .record(((rig.now_ns() - sent) / 1000).max(1));
                    }
                    Ok((status, resp)) => {
                        out.failed += 1;
                        rig.problem(format!("http {status}: {}", resp.chars().take(200).collect::<String>()));
                    }
                    Err(e) => {
                        out.failed += 1;
                        rig.problem(format!("http: {e}"));
                        match HttpConn::open(&addr).await {
                            Ok(c) => conn = c,
                            Err(_) => return out,
                        }
                    }
                }
            }
            out
        }));
    }
    let mut total = HttpOutcome {
        ok: 0,
        failed: 0,
        lat: hist(),
    };
    for t in tasks {
        let o = t.await.expect("http task");
        total.ok += o.ok;
        total.failed += o.failed;
        let _ = total.lat.add(&o.lat);
    }
    (phase, total, t0.elapsed())
}

async fn scenario_http(
    rig: Rc<Rig>,
    sizes: Vec<usize>,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    payload_size: usize,
) -> Value {
    let groups: Vec<(String, usize)> = sizes
        .iter()
        .map(|n| (format!("{}-http-{n}", rig.common.prefix), *n))
        .collect();
    let (_, receivers, setup) = match setup_groups(&rig, &groups, false).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "http", "error": e}),
    };
    let data = Rc::new(payload(payload_size));
    let mut results = Vec::new();
    for (g, (room, n)) in groups.iter().enumerate() {
        for measured in [false, true] {
            let secs = if measured { duration } else { warmup };
            if secs <= 0.0 {
                continue;
            }
            eprintln!("@phase http start");
            let cpu0 = rig.cpu();
            let (phase, out, send_time) =
                http_phase(&rig, room, concurrency, secs, data.clone()).await;
            rig.expected.borrow_mut().insert((g, phase), out.ok);
            let drained = drain(&rig, phase, out.ok * *n as u64, 0).await;
            let wall = send_time.max(Duration::from_millis(1));
            let cpu1 = rig.cpu();
            eprintln!("@phase http end");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !measured {
                continue;
            }
            let ch = check_phase(&rig, phase, &[]);
            let phases = rig.phases.borrow();
            let ph = &phases[phase];
            let cpu_s = cpu1 - cpu0;
            let mut v = check_json(&ch);
            let m = v.as_object_mut().expect("object");
            m.insert("ok".into(), json!(ch.ok && drained && out.failed == 0));
            m.insert("n".into(), json!(n));
            m.insert("payload".into(), json!(payload_size));
            m.insert("concurrency".into(), json!(concurrency));
            m.insert("requests_ok".into(), json!(out.ok));
            m.insert("requests_failed".into(), json!(out.failed));
            m.insert("secs".into(), json!(wall.as_secs_f64()));
            m.insert(
                "requests_per_sec".into(),
                json!(out.ok as f64 / wall.as_secs_f64()),
            );
            m.insert("request_latency".into(), pct(&out.lat));
            m.insert("latency".into(), pct(&ph.lat));
            m.insert("server_cpu_secs".into(), json!(cpu_s));
            m.insert(
                "cpu_us_per_request".into(),
                json!(cpu_s * 1e6 / out.ok.max(1) as f64),
            );
            m.insert(
                "deliveries_per_cpu_sec".into(),
                if cpu_s > 0.0 && ch.received > 0 {
                    json!(ch.received as f64 / cpu_s)
                } else {
                    Value::Null
                },
            );
            m.insert("drained".into(), json!(drained));
            results.push(v);
        }
    }
    close_all(receivers).await;
    json!({"scenario": "http", "setup": setup, "results": results})
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let rig = Rig::new(cli.common.clone());
    let out = local.block_on(&rt, async move {
        let started = Instant::now();
        let mut v = match cli.cmd {
            Cmd::Ramp { n, idle_secs } => scenario_ramp(rig.clone(), n, idle_secs).await,
            Cmd::Fanout {
                sizes,
                payloads,
                deliveries_per_sec,
                max_rate,
                duration,
                warmup,
            } => {
                scenario_fanout(
                    rig.clone(),
                    sizes,
                    payloads,
                    deliveries_per_sec,
                    max_rate,
                    duration,
                    warmup,
                )
                .await
            }
            Cmd::Ephemeral {
                sizes,
                payload,
                deliveries_per_sec,
                max_rate,
                duration,
                warmup,
            } => {
                scenario_ephemeral(
                    rig.clone(),
                    sizes,
                    payload,
                    deliveries_per_sec,
                    max_rate,
                    duration,
                    warmup,
                )
                .await
            }
            Cmd::Slow(args) => slow::scenario_slow(rig.clone(), args).await,
            Cmd::Storm(args) => storm::scenario_storm(rig.clone(), args).await,
            Cmd::Capacity(args) => capacity::scenario_capacity(rig.clone(), args).await,
            Cmd::Sse(args) => transports::scenario_sse(rig.clone(), args).await,
            Cmd::Poll(args) => transports::scenario_poll(rig.clone(), args).await,
            Cmd::Webhooks(args) => webhooks::scenario_webhooks(rig.clone(), args).await,
            Cmd::Rooms {
                rooms,
                per_room,
                rate_per_room,
                duration,
                warmup,
                payload,
            } => {
                scenario_rooms(
                    rig.clone(),
                    rooms,
                    per_room,
                    rate_per_room,
                    duration,
                    warmup,
                    payload,
                )
                .await
            }
            Cmd::Http {
                sizes,
                concurrency,
                duration,
                warmup,
                payload,
            } => scenario_http(rig.clone(), sizes, concurrency, duration, warmup, payload).await,
            Cmd::Dedup {
                receivers,
                rate,
                duration,
                warmup,
                ratios,
                payload,
            } => {
                scenario_dedup(
                    rig.clone(),
                    receivers,
                    rate,
                    duration,
                    warmup,
                    ratios,
                    payload,
                )
                .await
            }
        };
        let wall = started.elapsed().as_secs_f64();
        let cost = cost::cost_json(&rig, wall).await;
        let m = v.as_object_mut().expect("object");
        m.insert("problems".into(), json!(*rig.problems.borrow()));
        m.insert("loadgen_secs".into(), json!(wall));
        m.insert("cost".into(), cost);
        v
    });
    println!("{out}");
}
