//! Issue 12's bench rows: the transports for networks that block WebSockets
//! (docs/protocol.md §13).
//!
//! * `sse`: fan-out 1 → N where the N receivers are Server-Sent Event streams
//!   (`GET /v1/rooms/{room}/events?access_token=…`), or, with `--transport ws`, the same
//!   with WebSocket receivers, measured by the same code. The publisher is a WebSocket
//!   either way. Every SSE `message` event goes through the same checks as a socket's
//!   frames (seq exactly +1 from the `welcome` event's, exact counts per phase). Also
//!   measured: the server CPU and RSS the N connects cost (each SSE stream is a Worker
//!   request that holds an internal WebSocket to the room).
//! * `poll`: P clients long-polling in a loop (`GET /v1/rooms/{room}/poll?since=&epoch=
//!   &timeout=T`, keep-alive connections) while one WebSocket publishes at a fixed rate:
//!   polls per second, server CPU per poll, publish → poll-answer latency per message.
//!
//! The server's CPU is the whole `workerd` process, as everywhere in the rig: the Worker
//! that relays a stream and the room that feeds it are one process here.

use tokio::task::JoinHandle;

use super::*;

#[derive(clap::Args, Clone)]
pub(crate) struct SseArgs {
    /// Receivers in the room.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// `sse` (event streams) or `ws` (WebSockets, for comparison).
    #[arg(long, default_value = "sse")]
    transport: String,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Target deliveries per second; the publish rate is this ÷ N.
    #[arg(long, default_value_t = 20_000.0)]
    deliveries_per_sec: f64,
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// The event-stream route; `{room}` is replaced by the room name.
    #[arg(long, default_value = "/v1/rooms/{room}/events")]
    events_path: String,
}

#[derive(clap::Args, Clone)]
pub(crate) struct PollArgs {
    /// Polling clients, one measured phase (in a room of its own) per entry.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    pollers: Vec<usize>,
    /// Publishes per second while they poll.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The polls' `timeout`, whole seconds (1-30).
    #[arg(long, default_value_t = 2)]
    timeout: u64,
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long, default_value = "/v1/rooms/{room}/poll")]
    poll_path: String,
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client side: Content-Length and chunked bodies, streamed or whole.
// ---------------------------------------------------------------------------------------

pub(crate) struct HttpStream {
    pub(crate) tcp: TcpStream,
    /// Bytes read from the socket and not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet consumed.
    pub(crate) body: Vec<u8>,
    chunked: bool,
    /// Body bytes left: in the current chunk (chunked) or in the body (Content-Length).
    left: usize,
    /// A chunk's data ended; its CRLF is still to be skipped.
    need_crlf: bool,
    /// The body has ended.
    pub(crate) done: bool,
}

/// Parsed response head: status and lower-cased headers.
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits an HTTP head (request or response) into its first line and lower-cased headers.
pub(crate) fn parse_head(text: &str) -> (String, Vec<(String, String)>) {
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    (first, headers)
}

impl HttpStream {
    pub(crate) async fn connect(addr: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self::from_tcp(tcp))
    }

    pub(crate) fn from_tcp(tcp: TcpStream) -> Self {
        HttpStream {
            tcp,
            raw: Vec::with_capacity(4096),
            body: Vec::new(),
            chunked: false,
            left: 0,
            need_crlf: false,
            done: true,
        }
    }

    /// Reads more bytes from the socket; `false` at EOF.
    async fn read_more(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16384];
        let n = self.tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        self.raw.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads up to the end of a head (request or response) and returns its text.
    pub(crate) async fn read_head_text(&mut self) -> Result<Option<String>, String> {
        loop {
            if let Some(i) = find(&self.raw, b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.raw[..i]).to_string();
                self.raw.drain(..i + 4);
                return Ok(Some(text));
            }
            if !self.read_more().await? {
                return if self.raw.is_empty() {
                    Ok(None)
                } else {
                    Err("eof in head".into())
                };
            }
        }
    }

    /// Sets up body decoding from a head's headers (Content-Length or chunked).
    pub(crate) fn start_body(&mut self, headers: &[(String, String)]) {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        self.body.clear();
        self.need_crlf = false;
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            self.chunked = true;
            self.left = 0;
            self.done = false;
        } else {
            self.chunked = false;
            self.left = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.done = self.left == 0;
        }
        self.decode();
    }

    /// Moves what `raw` holds of the body into `body`.
    fn decode(&mut self) {
        loop {
            if self.done {
                return;
            }
            if self.left > 0 {
                let take = self.left.min(self.raw.len());
                if take == 0 {
                    return;
                }
                self.body.extend(self.raw.drain(..take));
                self.left -= take;
                if self.left == 0 {
                    if self.chunked {
                        self.need_crlf = true;
                    } else {
                        self.done = true;
                    }
                }
                continue;
            }
            if self.need_crlf {
                if self.raw.len() < 2 {
                    return;
                }
                self.raw.drain(..2);
                self.need_crlf = false;
                continue;
            }
            let Some(i) = find(&self.raw, b"\r\n") else {
                return;
            };
            let line = String::from_utf8_lossy(&self.raw[..i]).to_string();
            let size =
                usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            self.raw.drain(..i + 2);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                if self.raw.starts_with(b"\r\n") {
                    self.raw.drain(..2);
                }
                self.done = true;
                return;
            }
            self.left = size;
        }
    }

    /// Reads more of a streamed body into `body`; `false` once it has ended (or EOF).
    pub(crate) async fn pull(&mut self) -> Result<bool, String> {
        if self.done {
            return Ok(false);
        }
        if !self.read_more().await? {
            self.done = true;
            return Ok(false);
        }
        self.decode();
        Ok(true)
    }

    /// Reads a whole body.
    pub(crate) async fn read_body(&mut self) -> Result<String, String> {
        while !self.done {
            if !self.pull().await? && !self.done {
                return Err("eof in body".into());
            }
        }
        Ok(String::from_utf8_lossy(&std::mem::take(&mut self.body)).to_string())
    }

    /// Sends a request and reads the response head.
    pub(crate) async fn send(&mut self, req: &[u8]) -> Result<Head, String> {
        self.tcp.write_all(req).await.map_err(|e| e.to_string())?;
        let text = self
            .read_head_text()
            .await?
            .ok_or_else(|| "connection closed".to_string())?;
        let (first, headers) = parse_head(&text);
        let status = first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {first:?}"))?;
        self.start_body(&headers);
        Ok(Head { status, headers })
    }
}

// ---------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------

/// One parsed SSE event.
struct SseEvent {
    event: String,
    data: String,
}

/// Takes the complete events off the front of `buf` (events end with a blank line).
fn take_events(buf: &mut Vec<u8>, out: &mut Vec<SseEvent>) {
    let mut start = 0;
    while let Some(i) = find(&buf[start..], b"\n\n") {
        let block = String::from_utf8_lossy(&buf[start..start + i]).to_string();
        start += i + 2;
        let mut event = String::from("message");
        let mut data: Option<String> = None;
        for line in block.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with(':') || line.is_empty() {
                continue; // comment (keep-alive)
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_string(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {} // id, retry
            }
        }
        if let Some(data) = data {
            out.push(SseEvent { event, data });
        }
    }
    buf.drain(..start);
}

/// An SSE receiver: its state (checked like a socket's) and its reader task.
struct SseConn {
    state: Rc<RefCell<ConnState>>,
    task: JoinHandle<()>,
}

/// Opens one event stream, reads up to its `welcome` event, starts its reader task.
async fn connect_sse(
    rig: &Rc<Rig>,
    path_tmpl: &str,
    room: &str,
    user: &str,
    group: usize,
) -> Result<(SseConn, Duration), String> {
    let c = &rig.common;
    let t0 = Instant::now();
    let addr = host_port(&c.http_url);
    let token = user_token(&c.jwt_secret, user, 3600);
    let path = format!("{}?access_token={token}", path_tmpl.replace("{room}", room));
    let mut http = HttpStream::connect(&addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    let head = http.send(req.as_bytes()).await?;
    if head.status != 200 {
        let body = http.read_body().await.unwrap_or_default();
        return Err(format!(
            "http {}: {}",
            head.status,
            body.chars().take(200).collect::<String>()
        ));
    }
    if !head
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream"))
    {
        return Err(format!("content-type {:?}", head.header("content-type")));
    }
    let mut events = Vec::new();
    let (welcome, elapsed) = 'outer: loop {
        take_events(&mut http.body, &mut events);
        for (i, e) in events.iter().enumerate() {
            if e.event == "welcome" {
                let at = t0.elapsed();
                let w = Welcome::from_text(&e.data, 1).ok_or("bad welcome")?;
                events.drain(..=i);
                break 'outer (w, at);
            }
            if e.event == "close" {
                return Err(format!("closed before welcome: {}", e.data));
            }
        }
        events.clear();
        let more = tokio::time::timeout(Duration::from_secs(30), http.pull())
            .await
            .map_err(|_| "no welcome within 30 s".to_string())??;
        if !more {
            return Err("stream ended before welcome".into());
        }
    };
    let state = Rc::new(RefCell::new(ConnState {
        group,
        last_seq: welcome.seq,
        ..Default::default()
    }));
    rig.conns.borrow_mut().push(state.clone());
    let task = tokio::task::spawn_local(sse_read_loop(rig.clone(), http, events, state.clone()));
    Ok((SseConn { state, task }, elapsed))
}

async fn sse_read_loop(
    rig: Rc<Rig>,
    mut http: HttpStream,
    mut events: Vec<SseEvent>,
    state: Rc<RefCell<ConnState>>,
) {
    loop {
        take_events(&mut http.body, &mut events);
        for e in events.drain(..) {
            FRAMES_SEEN.with(|c| c.set(c.get() + 1));
            if e.event == "close" {
                state.borrow_mut().closed = Some(format!("event: close {}", e.data));
                return;
            }
            rig.on_text(&state, &e.data);
        }
        match http.pull().await {
            Ok(true) => {}
            Ok(false) => {
                state
                    .borrow_mut()
                    .closed
                    .get_or_insert_with(|| "stream ended".into());
                return;
            }
            Err(e) => {
                state.borrow_mut().closed = Some(format!("error {e}"));
                return;
            }
        }
    }
}

/// Scenario `sse`: fan-out 1 → N to event streams (or WebSockets with `--transport ws`).
pub(crate) async fn scenario_sse(rig: Rc<Rig>, a: SseArgs) -> Value {
    let sse = match a.transport.as_str() {
        "sse" => true,
        "ws" => false,
        other => return json!({"scenario": "sse", "error": format!("unknown transport {other}")}),
    };
    let room = format!("{}-sse-{}-{}", rig.common.prefix, a.transport, a.n);
    let (publisher, _) = match connect(&rig, &room, "pub", 0).await {
        Ok(x) => x,
        Err(e) => return json!({"scenario": "sse", "error": format!("publisher: {e}")}),
    };
    let mut publishers = vec![publisher];
    settle(Duration::from_secs(5)).await;
    let rss0 = rig.rss();
    let cpu0 = rig.cpu();
    let t0 = Instant::now();
    let sem = Rc::new(Semaphore::new(rig.common.connect_concurrency.max(1)));
    let mut handles = Vec::with_capacity(a.n);
    for i in 0..a.n {
        let (sem, rig, room, path) = (
            sem.clone(),
            rig.clone(),
            room.clone(),
            a.events_path.clone(),
        );
        handles.push(tokio::task::spawn_local(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            let user = format!("u{i}");
            if sse {
                connect_sse(&rig, &path, &room, &user, 0)
                    .await
                    .map(|(c, d)| (Err(c), d))
            } else {
                connect(&rig, &room, &user, 0)
                    .await
                    .map(|(c, d)| (Ok(c), d))
            }
        }));
    }
    let mut ws_conns = Vec::new();
    let mut sse_conns = Vec::new();
    let mut failures = Vec::new();
    let mut handshake = hist();
    for h in handles {
        match h.await {
            Ok(Ok((conn, took))) => {
                let _ = handshake.record((took.as_micros() as u64).max(1));
                match conn {
                    Ok(ws) => ws_conns.push(ws),
                    Err(s) => sse_conns.push(s),
                }
            }
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("task: {e}")),
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let cpu1 = rig.cpu();
    settle(Duration::from_secs(60)).await;
    let cpu2 = rig.cpu();
    let rss1 = rig.rss();
    let connected = ws_conns.len() + sse_conns.len();
    let connect = json!({
        "clients": a.n,
        "connected": connected,
        "failures": failures.len(),
        "failure_samples": failures.iter().take(5).collect::<Vec<_>>(),
        "secs": connect_secs,
        "connects_per_sec": connected as f64 / connect_secs,
        "handshake": pct(&handshake),
        "server_cpu_secs": cpu1 - cpu0,
        "server_cpu_ms_per_connect": (cpu1 - cpu0) * 1000.0 / connected.max(1) as f64,
        "settle_server_cpu_secs": cpu2 - cpu1,
        "rss_before_kib": rss0,
        "rss_connected_kib": rss1,
        "rss_per_client_kib": (rss1 as f64 - rss0 as f64) / connected.max(1) as f64,
    });
    if !failures.is_empty() {
        for s in &sse_conns {
            s.task.abort();
        }
        close_all(ws_conns).await;
        close_all(publishers).await;
        return json!({"scenario": "sse", "transport": a.transport, "error": {"ok": false, "connect": connect}});
    }
    let data = Rc::new(payload(a.payload));
    let rate = a.deliveries_per_sec / a.n as f64;
    if a.warmup > 0.0 {
        let _ = run_phase_group(
            &rig,
            &mut publishers,
            0,
            a.n,
            rate,
            a.warmup,
            data.clone(),
            0.0,
        )
        .await;
    }
    let mut v = run_phase_group(&rig, &mut publishers, 0, a.n, rate, a.duration, data, 0.0).await;
    let m = v.as_object_mut().expect("object");
    m.insert("n".into(), json!(a.n));
    m.insert("payload".into(), json!(a.payload));
    m.insert("transport".into(), json!(a.transport));
    // Receivers the server closed (an SSE `event: close`, a WebSocket close) fail the phase.
    let closed: Vec<String> = sse_conns
        .iter()
        .filter_map(|s| s.state.borrow().closed.clone())
        .take(3)
        .collect();
    m.insert("closed_samples".into(), json!(closed));
    for s in &sse_conns {
        s.task.abort();
    }
    close_all(ws_conns).await;
    close_all(publishers).await;
    json!({"scenario": "sse", "transport": a.transport, "connect": connect, "results": [v]})
}

// ---------------------------------------------------------------------------------------
// Long-poll
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct PollCounters {
    /// Polls answered 200.
    requests: Cell<u64>,
    /// Of those, answered with no messages (the timeout).
    empty: Cell<u64>,
    failed: Cell<u64>,
    /// Answers with `"recovered":false` after the first.
    unrecovered: Cell<u64>,
    /// Pollers that have learned their position.
    ready: Cell<usize>,
    stop: Cell<bool>,
    lat: RefCell<Option<Histogram<u64>>>,
}

async fn poller(
    rig: Rc<Rig>,
    counters: Rc<PollCounters>,
    path: String,
    token: String,
    timeout: u64,
    state: Rc<RefCell<ConnState>>,
) {
    let addr = host_port(&rig.common.http_url);
    let mut http = match HttpStream::connect(&addr).await {
        Ok(h) => h,
        Err(e) => {
            rig.problem(format!("poll connect: {e}"));
            counters.failed.set(counters.failed.get() + 1);
            return;
        }
    };
    let mut position: Option<(String, u64)> = None;
    while !counters.stop.get() {
        let query = match &position {
            Some((epoch, since)) => format!("since={since}&epoch={epoch}&timeout={timeout}"),
            None => format!("timeout={timeout}"),
        };
        let req = format!(
            "GET {path}?{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let sent = Instant::now();
        let answer = match http.send(req.as_bytes()).await {
            Ok(head) => http.read_body().await.map(|b| (head.status, b)),
            Err(e) => Err(e),
        };
        let (status, body) = match answer {
            Ok(x) => x,
            Err(e) => {
                counters.failed.set(counters.failed.get() + 1);
                rig.problem(format!("poll: {e}"));
                match HttpStream::connect(&addr).await {
                    Ok(h) => {
                        http = h;
                        continue;
                    }
                    Err(_) => return,
                }
            }
        };
        if status != 200 {
            counters.failed.set(counters.failed.get() + 1);
            rig.problem(format!(
                "poll http {status}: {}",
                body.chars().take(200).collect::<String>()
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&body) else {
            counters.failed.set(counters.failed.get() + 1);
            rig.problem(format!(
                "poll body: {}",
                body.chars().take(200).collect::<String>()
            ));
            continue;
        };
        let epoch = v["epoch"].as_str().unwrap_or("").to_string();
        let last_seq = v["last_seq"].as_u64().unwrap_or(0);
        match position.take() {
            None => {
                // The first poll, without a position, learns where "now" is.
                state.borrow_mut().last_seq = last_seq;
                position = Some((epoch, last_seq));
                counters.ready.set(counters.ready.get() + 1);
                continue;
            }
            Some((old_epoch, since)) => {
                counters.requests.set(counters.requests.get() + 1);
                if let Some(h) = counters.lat.borrow_mut().as_mut() {
                    let _ = h.record((sent.elapsed().as_micros() as u64).max(1));
                }
                if v["recovered"] != Value::Bool(true) {
                    counters.unrecovered.set(counters.unrecovered.get() + 1);
                    rig.problem(format!(
                        "poll: recovered:false after since={since} (last_seq {last_seq})"
                    ));
                    state.borrow_mut().order_errors += 1;
                    state.borrow_mut().last_seq = last_seq;
                    position = Some((epoch, last_seq));
                    continue;
                }
                let msgs = v["messages"].as_array().cloned().unwrap_or_default();
                if msgs.is_empty() {
                    counters.empty.set(counters.empty.get() + 1);
                }
                for m in &msgs {
                    rig.on_text(&state, &m.to_string());
                }
                let held = state.borrow().last_seq;
                position = Some((if epoch.is_empty() { old_epoch } else { epoch }, held));
            }
        }
    }
}

/// Scenario `poll`: P long-polling clients while one WebSocket publishes.
pub(crate) async fn scenario_poll(rig: Rc<Rig>, a: PollArgs) -> Value {
    let data = Rc::new(payload(a.payload));
    let mut results = Vec::new();
    let mut user = 0usize;
    for (g, &p) in a.pollers.iter().enumerate() {
        let room = format!("{}-poll-{p}", rig.common.prefix);
        let (publisher, _) = match connect(&rig, &room, &format!("pub{g}"), g).await {
            Ok(x) => x,
            Err(e) => return json!({"scenario": "poll", "error": format!("publisher: {e}")}),
        };
        let mut publishers = vec![publisher];
        let counters = Rc::new(PollCounters::default());
        let path = a.poll_path.replace("{room}", &room);
        let mut tasks = Vec::new();
        for _ in 0..p {
            let token = user_token(&rig.common.jwt_secret, &format!("p{user}"), 3600);
            user += 1;
            let state = Rc::new(RefCell::new(ConnState {
                group: g,
                ..Default::default()
            }));
            rig.conns.borrow_mut().push(state.clone());
            tasks.push(tokio::task::spawn_local(poller(
                rig.clone(),
                counters.clone(),
                path.clone(),
                token,
                a.timeout,
                state,
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while counters.ready.get() < p && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if counters.ready.get() < p {
            counters.stop.set(true);
            for t in &tasks {
                t.abort();
            }
            return json!({"scenario": "poll", "error": format!("{} of {p} pollers started", counters.ready.get())});
        }
        if a.warmup > 0.0 {
            let _ = run_phase_group(
                &rig,
                &mut publishers,
                g,
                p,
                a.rate,
                a.warmup,
                data.clone(),
                0.0,
            )
            .await;
        }
        let (r0, e0, f0) = (
            counters.requests.get(),
            counters.empty.get(),
            counters.failed.get(),
        );
        *counters.lat.borrow_mut() = Some(hist());
        let mut v = run_phase_group(
            &rig,
            &mut publishers,
            g,
            p,
            a.rate,
            a.duration,
            data.clone(),
            0.0,
        )
        .await;
        let polls = counters.requests.get() - r0;
        let empty = counters.empty.get() - e0;
        let failed = counters.failed.get() - f0;
        let lat = counters.lat.borrow_mut().take().unwrap_or_else(hist);
        let m = v.as_object_mut().expect("object");
        let wall = m["wall_secs"].as_f64().unwrap_or(1.0);
        let cpu = m["server_cpu_secs"].as_f64().unwrap_or(0.0);
        m.insert("pollers".into(), json!(p));
        m.insert("rate".into(), json!(a.rate));
        m.insert("timeout_secs".into(), json!(a.timeout));
        m.insert("polls".into(), json!(polls));
        m.insert("empty_polls".into(), json!(empty));
        m.insert("failed_polls".into(), json!(failed));
        m.insert("polls_per_sec".into(), json!(polls as f64 / wall));
        m.insert(
            "cpu_us_per_poll".into(),
            json!(cpu * 1e6 / polls.max(1) as f64),
        );
        m.insert(
            "messages_per_poll".into(),
            json!(m["deliveries"].as_f64().unwrap_or(0.0) / polls.max(1) as f64),
        );
        m.insert("poll_request".into(), pct(&lat));
        if failed > 0 {
            m.insert("ok".into(), json!(false));
        }
        results.push(v);
        // Let every poller finish its current poll (at most `timeout`), so the next room's
        // phase does not pay for these.
        counters.stop.set(true);
        let mut pub_conn = publishers.pop();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(a.timeout + 5), t).await;
        }
        if let Some(c) = pub_conn.take() {
            close_all(vec![c]).await;
        }
    }
    json!({"scenario": "poll", "results": results})
}
