//! Scenario 7, slow consumers (contract v1.1 §C): publishers and readers in one room,
//! and one reader that stops reading for the whole measured phase while the others keep
//! up. It stops polling its socket, so the kernel's buffers fill and the server's writes
//! back up. Measured: the server's RSS over time, the other readers' latency, whether
//! and when the server closes the paused socket (and with which code), and whether the
//! paused reader gets every message exactly once after it resumes — in place, or by
//! reconnecting with `?since=<last seq>&epoch=<epoch>` (v1 §6).
//!
//! Every reading client sends receipts when its `welcome` says `"receipts":true`:
//! `{"type":"received","messages":M}`, M = WebSocket messages received on this
//! connection (the literal `pong` excluded), every `--receipt-bytes` or
//! `--receipt-messages`, whichever comes first. The paused reader sends none while
//! paused (it reads nothing).
//!
//! Each connection here is one task that owns its whole socket (reads, publishes and
//! receipts), unlike the other scenarios' split reader/writer, because a reader must be
//! able to write receipts.

use std::net::SocketAddr;

use clap::ArgAction;
use tokio::sync::mpsc;

use super::*;

#[derive(clap::Args, Clone)]
pub(crate) struct SlowArgs {
    /// Publishing sockets (they read each other's messages too).
    #[arg(long, default_value_t = 5)]
    publishers: usize,
    /// Readers that keep reading.
    #[arg(long, default_value_t = 3)]
    receivers: usize,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 80.0)]
    rate: f64,
    /// Bytes of `data` per message.
    #[arg(long, default_value_t = 16384)]
    payload: usize,
    /// Seconds of publishing with one reader paused (it stays paused until the other
    /// readers have every message of the phase).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of publishing before the pause, everyone reading.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// First a phase as long as the paused one with everyone reading: the server's RSS
    /// grows under this traffic anyway (garbage, allocator high-water marks), and the
    /// readers' latency without a paused socket, to compare with.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    control: bool,
    /// RSS and TCP sampling interval, ms.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Seconds to keep sampling after the paused reader has caught up (or given up).
    #[arg(long, default_value_t = 3.0)]
    after_secs: f64,
    /// A receipt at least every this many bytes received...
    #[arg(long, default_value_t = 131_072)]
    receipt_bytes: usize,
    /// ...or every this many WebSocket messages.
    #[arg(long, default_value_t = 256)]
    receipt_messages: u64,
    /// Whether the paused reader sends receipts while it reads (before and after the
    /// pause). `false` makes it a client the server can only estimate.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    paused_receipts: bool,
    /// Reconnects the paused reader may make after it is closed. Each one resumes from
    /// the last seq it got; a server that closes a socket whose replay alone exceeds its
    /// bound makes it reconnect many times, which is what the count shows.
    #[arg(long, default_value_t = 100)]
    max_reconnects: usize,
    /// Seconds to wait for the paused reader to catch up (per connection).
    #[arg(long, default_value_t = 60.0)]
    catch_up_timeout: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Publisher,
    Reader,
    Paused,
}

/// What one client has seen, across its reconnects.
#[derive(Default)]
struct Track {
    last_seq: u64,
    /// `welcome.seq` of the first connection: this client must get every seq after it.
    base: u64,
    /// Deliveries per seq after `base` (index `seq - base - 1`).
    seen: Vec<u32>,
    order_errors: u64,
    /// What receipts count: text messages on the current connection, `pong` excluded.
    ws_messages: u64,
    bytes_since_receipt: usize,
    msgs_since_receipt: u64,
    receipts_sent: u64,
    /// The current connection's `welcome` asked for receipts.
    receipts: bool,
    epoch: Option<String>,
    frames: u64,
    acks: u64,
    max_ack_seq: u64,
    errors: u64,
    /// The current connection is open (its task still reads or waits to).
    open: bool,
    /// How each connection ended, unless the rig ended it.
    closes: Vec<Value>,
    /// Set before the rig closes the socket itself.
    closing: bool,
}

enum Ctl {
    Pause,
    Resume,
    Publish {
        text: String,
        phase: usize,
        stream: usize,
        k: usize,
    },
    Close,
}

struct Shared {
    rig: Rc<Rig>,
    args: SlowArgs,
    t0: Instant,
    /// The measured phase (latency is recorded for it and the control phase only).
    measured: Cell<usize>,
    /// The control phase (nobody paused).
    control: Cell<usize>,
    reader_lat: RefCell<Histogram<u64>>,
    control_lat: RefCell<Histogram<u64>>,
    publisher_lat: RefCell<Histogram<u64>>,
    paused_lat: RefCell<Histogram<u64>>,
}

impl Shared {
    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

struct Client {
    role: Role,
    track: Rc<RefCell<Track>>,
    ctl: mpsc::UnboundedSender<Ctl>,
    local: SocketAddr,
}

fn on_text(sh: &Shared, role: Role, track: &RefCell<Track>, text: &str) {
    let now = sh.rig.now_ns();
    for f in parse_frames(text) {
        match f.ty.as_ref() {
            "message" => {
                let Some(seq) = f.seq else { continue };
                let mut t = track.borrow_mut();
                // A publisher does not receive its own messages (echo is off), so it
                // sees gaps; for it only the order is checked.
                let in_order = if role == Role::Publisher {
                    seq > t.last_seq
                } else {
                    seq == t.last_seq + 1
                };
                if !in_order {
                    t.order_errors += 1;
                }
                t.last_seq = t.last_seq.max(seq);
                if seq > t.base {
                    let i = (seq - t.base - 1) as usize;
                    if t.seen.len() <= i {
                        t.seen.resize(i + 1, 0);
                    }
                    t.seen[i] += 1;
                }
                t.frames += 1;
                drop(t);
                let Some((phase, stream, k)) = f.id.as_deref().and_then(parse_id) else {
                    continue;
                };
                let control = phase == sh.control.get();
                if phase != sh.measured.get() && !(control && role == Role::Reader) {
                    continue;
                }
                let sent = sh
                    .rig
                    .phases
                    .borrow()
                    .get(phase)
                    .and_then(|p| p.sent.get(stream)?.get(k).copied())
                    .unwrap_or(0);
                if sent > 0 {
                    let us = (now.saturating_sub(sent) / 1000).max(1);
                    let h = match role {
                        _ if control => &sh.control_lat,
                        Role::Reader => &sh.reader_lat,
                        Role::Publisher => &sh.publisher_lat,
                        Role::Paused => &sh.paused_lat,
                    };
                    let _ = h.borrow_mut().record(us);
                }
            }
            "ack" => {
                let mut t = track.borrow_mut();
                t.acks += 1;
                t.max_ack_seq = t.max_ack_seq.max(f.seq.unwrap_or(0));
            }
            "error" => {
                track.borrow_mut().errors += 1;
                sh.rig.problem(format!(
                    "slow: {role:?} got error frame {} (id {:?})",
                    f.code.as_deref().unwrap_or("?"),
                    f.id.as_deref()
                ));
            }
            _ => {}
        }
    }
}

/// One connection: reads unless paused, writes publishes it is given and receipts.
async fn client_task(
    sh: Rc<Shared>,
    role: Role,
    mut ws: Ws,
    track: Rc<RefCell<Track>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let send_receipts = role != Role::Paused || sh.args.paused_receipts;
    let mut paused = false;
    let ended = |how: String, code: Option<u16>, reason: Option<String>| {
        let mut t = track.borrow_mut();
        t.open = false;
        if !t.closing {
            let at = sh.secs();
            let (messages, last_seq) = (t.ws_messages, t.last_seq);
            t.closes.push(json!({
                "at_s": at, "how": how, "code": code, "reason": reason,
                "ws_messages_on_connection": messages, "last_seq": last_seq,
            }));
        }
    };
    loop {
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                None | Some(Ctl::Close) => {
                    track.borrow_mut().closing = true;
                    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
                    track.borrow_mut().open = false;
                    return;
                }
                Some(Ctl::Pause) => paused = true,
                Some(Ctl::Resume) => paused = false,
                Some(Ctl::Publish { text, phase, stream, k }) => {
                    let sent = sh.rig.now_ns();
                    if let Some(slot) = sh.rig.phases.borrow_mut().get_mut(phase).and_then(|p| p.sent.get_mut(stream)?.get_mut(k)) {
                        *slot = sent;
                    }
                    if let Err(e) = ws.send(Message::text(text)).await {
                        sh.rig.problem(format!("slow: publish: {e}"));
                        ended(format!("send error {e}"), None, None);
                        return;
                    }
                }
            },
            m = ws.next(), if !paused => match m {
                Some(Ok(Message::Text(t))) => {
                    FRAMES_SEEN.with(|c| c.set(c.get() + 1));
                    let receipt = {
                        let mut tr = track.borrow_mut();
                        if t.as_str() != "pong" {
                            tr.ws_messages += 1;
                            tr.msgs_since_receipt += 1;
                            tr.bytes_since_receipt += t.len();
                        }
                        let due = tr.bytes_since_receipt >= sh.args.receipt_bytes
                            || tr.msgs_since_receipt >= sh.args.receipt_messages;
                        if send_receipts && tr.receipts && due {
                            tr.bytes_since_receipt = 0;
                            tr.msgs_since_receipt = 0;
                            tr.receipts_sent += 1;
                            Some(tr.ws_messages)
                        } else {
                            None
                        }
                    };
                    on_text(&sh, role, &track, &t);
                    if let Some(n) = receipt {
                        let frame = format!(r#"{{"type":"received","messages":{n}}}"#);
                        if let Err(e) = ws.send(Message::text(frame)).await {
                            ended(format!("receipt send error {e}"), None, None);
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(cf))) => {
                    let (code, reason) = match cf {
                        Some(cf) => (Some(u16::from(cf.code)), Some(cf.reason.to_string())),
                        None => (None, None),
                    };
                    ended("close frame".into(), code, reason);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    ended(format!("error {e}"), None, None);
                    return;
                }
                None => {
                    ended("eof".into(), None, None);
                    return;
                }
            },
        }
    }
}

async fn open_client(
    sh: &Rc<Shared>,
    room: &str,
    user: &str,
    role: Role,
    query: Option<&str>,
    track: Option<Rc<RefCell<Track>>>,
) -> Result<(Client, Welcome), String> {
    let (ws, w, _, local) = open_socket(&sh.rig, room, user, query).await?;
    let track = match track {
        Some(t) => {
            let mut tr = t.borrow_mut();
            tr.ws_messages = w.messages;
            tr.bytes_since_receipt = 0;
            tr.msgs_since_receipt = 0;
            tr.receipts = w.receipts;
            tr.open = true;
            if w.epoch.is_some() {
                tr.epoch = w.epoch.clone();
            }
            drop(tr);
            t
        }
        None => Rc::new(RefCell::new(Track {
            last_seq: w.seq,
            base: w.seq,
            ws_messages: w.messages,
            receipts: w.receipts,
            epoch: w.epoch.clone(),
            open: true,
            ..Default::default()
        })),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(client_task(sh.clone(), role, ws, track.clone(), rx));
    Ok((
        Client {
            role,
            track,
            ctl: tx,
            local,
        },
        w,
    ))
}

/// Publishes `frames` messages from each publisher at `rate` in total, open loop.
/// Returns the phase and the publisher's largest lateness, ms.
async fn publish_phase(sh: &Rc<Shared>, publishers: &[&Client], secs: f64) -> (usize, u64, f64) {
    let rig = &sh.rig;
    let streams = publishers.len();
    let phase = rig.new_phase(streams);
    let per = sh.args.rate / streams as f64;
    let frames = ((per * secs).round() as usize).max(1);
    for s in 0..streams {
        rig.phases.borrow_mut()[phase].sent[s] = vec![0; frames];
    }
    let data = payload(sh.args.payload);
    let start = Instant::now() + Duration::from_millis(5);
    let interval = Duration::from_secs_f64(1.0 / per);
    let futs = publishers.iter().enumerate().map(|(stream, c)| {
        let data = &data;
        let offset = Duration::from_secs_f64(stream as f64 / sh.args.rate);
        async move {
            let mut lag = 0u64;
            for k in 0..frames {
                let intended = start + offset + interval.mul_f64(k as f64);
                let now = Instant::now();
                if intended > now {
                    tokio::time::sleep_until(intended.into()).await;
                } else {
                    lag = lag.max((now - intended).as_nanos() as u64);
                }
                let id = bench_id(phase, stream, k);
                let text =
                    format!(r#"{{"type":"publish","id":"{id}","event":"bench","data":{data}}}"#);
                let _ = c.ctl.send(Ctl::Publish {
                    text,
                    phase,
                    stream,
                    k,
                });
            }
            lag
        }
    });
    let lag = futures_util::future::join_all(futs)
        .await
        .into_iter()
        .max()
        .unwrap_or(0);
    (phase, (frames * streams) as u64, lag as f64 / 1e6)
}

/// Waits until `done()` or `secs` have passed; returns whether `done()` held.
async fn wait_for(secs: f64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `/proc/net/tcp`'s spelling of an IPv4 address (`0100007F:1F90` for 127.0.0.1:8080).
fn proc_addr(a: SocketAddr) -> Option<String> {
    match a {
        SocketAddr::V4(v) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v.ip().octets()),
            v.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

fn tcp_state_name(st: u8) -> &'static str {
    match st {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "?",
    }
}

/// One end of a TCP connection: its state and a queue length in bytes.
type TcpEnd = Option<(u8, u64)>;

/// Both ends of one loopback connection from `/proc/net/tcp`: (state, queue bytes) of
/// our end (bytes received, unread) and of the server's end (bytes sent, unacknowledged).
fn tcp_ends(local: &str) -> (TcpEnd, TcpEnd) {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return (None, None);
    };
    let (mut ours, mut theirs) = (None, None);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let st = u8::from_str_radix(f[3], 16).unwrap_or(0);
        let (tx, rx) = f[4].split_once(':').unwrap_or(("0", "0"));
        let tx = u64::from_str_radix(tx, 16).unwrap_or(0);
        let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
        if f[1] == local {
            ours = Some((st, rx));
        } else if f[2] == local {
            theirs = Some((st, tx));
        }
    }
    (ours, theirs)
}

pub(crate) async fn scenario_slow(rig: Rc<Rig>, args: SlowArgs) -> Value {
    let room = format!("{}-slow", rig.common.prefix);
    let sh = Rc::new(Shared {
        rig: rig.clone(),
        args: args.clone(),
        t0: Instant::now(),
        measured: Cell::new(usize::MAX),
        control: Cell::new(usize::MAX),
        reader_lat: RefCell::new(hist()),
        control_lat: RefCell::new(hist()),
        publisher_lat: RefCell::new(hist()),
        paused_lat: RefCell::new(hist()),
    });
    let mut clients: Vec<Client> = Vec::new();
    let roles = std::iter::repeat_n(Role::Publisher, args.publishers)
        .chain(std::iter::repeat_n(Role::Reader, args.receivers))
        .chain(std::iter::once(Role::Paused));
    let mut paused_welcome = None;
    for (i, role) in roles.enumerate() {
        match open_client(&sh, &room, &format!("u{i}"), role, None, None).await {
            Ok((c, w)) => {
                if role == Role::Paused {
                    paused_welcome = Some(w);
                }
                clients.push(c);
            }
            Err(e) => return json!({"scenario": "slow", "error": format!("connect: {e}")}),
        }
    }
    settle(Duration::from_secs(10)).await;
    let receipts_advertised = clients[0].track.borrow().receipts;
    let publishers: Vec<&Client> = clients
        .iter()
        .filter(|c| c.role == Role::Publisher)
        .collect();
    let readers: Vec<&Client> = clients.iter().filter(|c| c.role == Role::Reader).collect();
    let paused = clients
        .iter()
        .find(|c| c.role == Role::Paused)
        .expect("paused client");
    let paused_local = proc_addr(paused.local);

    // Samplers: the server's RSS and both ends of the paused reader's first connection
    // every `sample_ms`, and the room's own connection count as often. The room's count
    // says when it gave up on the socket: its TCP end stays ESTABLISHED until the client
    // reads up to the close frame, which workerd sends after what it already buffered.
    let stop = Rc::new(Cell::new(false));
    let samples: Rc<RefCell<Vec<Value>>> = Rc::default();
    let room_polls: Rc<RefCell<Vec<Value>>> = Rc::default();
    let sampler = {
        let (sh, stop, samples, local) = (
            sh.clone(),
            stop.clone(),
            samples.clone(),
            paused_local.clone(),
        );
        tokio::task::spawn_local(async move {
            while !stop.get() {
                let (ours, theirs) = local.as_deref().map(tcp_ends).unwrap_or((None, None));
                samples.borrow_mut().push(json!({
                    "t_s": sh.secs(),
                    "rss_kib": sh.rig.rss(),
                    "paused_client_tcp": ours.map(|(st, q)| json!({"state": tcp_state_name(st), "unread_bytes": q})),
                    "paused_server_tcp": theirs.map(|(st, q)| json!({"state": tcp_state_name(st), "unsent_or_unacked_bytes": q})),
                }));
                tokio::time::sleep(Duration::from_millis(sh.args.sample_ms)).await;
            }
        })
    };
    let poller = {
        let (sh, stop, polls, room) = (sh.clone(), stop.clone(), room_polls.clone(), room.clone());
        tokio::task::spawn_local(async move {
            while !stop.get() {
                let t = sh.secs();
                if let Some(info) = room_info(&sh.rig, &room).await {
                    polls
                        .borrow_mut()
                        .push(json!({"t_s": t, "connections": info["connections"]}));
                } else {
                    return; // the peer has no room API
                }
                tokio::time::sleep(Duration::from_millis(sh.args.sample_ms)).await;
            }
        })
    };
    let caught_up = |c: &Client, seq: u64| c.track.borrow().last_seq >= seq;
    let final_seq = || {
        clients
            .iter()
            .map(|c| c.track.borrow().max_ack_seq)
            .max()
            .unwrap_or(0)
    };
    let acks = || {
        publishers
            .iter()
            .map(|c| c.track.borrow().acks)
            .sum::<u64>()
    };

    // Warm-up: everyone reads (and sends receipts).
    let rss_start = rig.rss();
    let mut published = 0u64;
    if args.warmup > 0.0 {
        let (_, frames, _) = publish_phase(&sh, &publishers, args.warmup).await;
        published += frames;
        wait_for(rig.common.drain_timeout, || {
            acks() >= published
                && clients
                    .iter()
                    .filter(|c| c.role != Role::Publisher)
                    .all(|c| caught_up(c, final_seq()))
        })
        .await;
    }
    // Control: the same phase with nobody paused.
    let mut control = Value::Null;
    let mut control_start = None;
    if args.control {
        sh.control.set(rig.phases.borrow().len());
        let (t_c0, rss_c0) = (sh.secs(), rig.rss());
        control_start = Some(t_c0);
        let (_, frames, _) = publish_phase(&sh, &publishers, args.duration).await;
        published += frames;
        let drained = wait_for(rig.common.drain_timeout, || {
            acks() >= published
                && clients
                    .iter()
                    .filter(|c| c.role != Role::Publisher)
                    .all(|c| caught_up(c, final_seq()))
        })
        .await;
        let (t_c1, rss_c1) = (sh.secs(), rig.rss());
        control = json!({
            "drained": drained, "start_s": t_c0, "end_s": t_c1,
            "rss_start_kib": rss_c0, "rss_end_kib": rss_c1,
            "growth_kib": rss_c1 as i64 - rss_c0 as i64,
            "readers_latency": pct(&sh.control_lat.borrow()),
        });
    }
    let receipts_before_pause = paused.track.borrow().receipts_sent;

    // The measured phase: one reader paused throughout.
    let _ = paused.ctl.send(Ctl::Pause);
    let t_pause = sh.secs();
    let rss_pause = rig.rss();
    let seq_at_pause = paused.track.borrow().last_seq;
    let phase = rig.phases.borrow().len();
    sh.measured.set(phase);
    let (phase2, frames, send_lag_ms) = publish_phase(&sh, &publishers, args.duration).await;
    debug_assert_eq!(phase, phase2);
    published += frames;
    let t_published = sh.secs();
    let readers_drained = wait_for(rig.common.drain_timeout, || {
        acks() >= published && readers.iter().all(|c| caught_up(c, final_seq()))
    })
    .await;
    let fin = final_seq();
    let t_resume = sh.secs();
    let rss_resume = rig.rss();
    let paused_open_at_resume = paused.track.borrow().open;
    let _ = paused.ctl.send(Ctl::Resume);

    // Recovery: read what is there; if the server closed the socket, reconnect with resume.
    let in_place = wait_for(args.catch_up_timeout, || {
        let t = paused.track.borrow();
        t.last_seq >= fin || !t.open
    })
    .await;
    let mut reconnects = Vec::new();
    let mut extra_clients = Vec::new();
    let mut recovered = in_place && paused.track.borrow().last_seq >= fin;
    let closed_first = !paused.track.borrow().closes.is_empty();
    while !recovered && !paused.track.borrow().open && reconnects.len() < args.max_reconnects {
        let (since, epoch) = {
            let t = paused.track.borrow();
            (t.last_seq, t.epoch.clone())
        };
        let query = match &epoch {
            Some(e) => format!("since={since}&epoch={e}"),
            None => format!("since={since}"),
        };
        let at = sh.secs();
        let user = format!("u{}", args.publishers + args.receivers);
        match open_client(
            &sh,
            &room,
            &user,
            Role::Paused,
            Some(&query),
            Some(paused.track.clone()),
        )
        .await
        {
            Ok((c, w)) => {
                let says_recovered = w.resume["recovered"] == Value::Bool(true);
                let done = says_recovered
                    && wait_for(args.catch_up_timeout, || {
                        let t = paused.track.borrow();
                        t.last_seq >= fin || !t.open
                    })
                    .await
                    && paused.track.borrow().last_seq >= fin;
                reconnects.push(json!({
                    "at_s": at, "since": since, "epoch": epoch, "welcome_seq": w.seq,
                    "resume": w.resume, "caught_up": done, "ended_at_s": sh.secs(),
                }));
                extra_clients.push(c);
                recovered = done;
                if !says_recovered {
                    break; // nothing more can come: the client would resync from history
                }
            }
            Err(e) => {
                reconnects.push(json!({"at_s": at, "since": since, "error": e}));
                break;
            }
        }
    }
    let t_recovered = sh.secs();
    let rss_recovered = rig.rss();
    tokio::time::sleep(Duration::from_secs_f64(args.after_secs)).await;
    let rss_after = rig.rss();
    stop.set(true);
    let _ = sampler.await;
    let _ = poller.await;

    // Verdicts.
    let gaps_dups = |t: &Track| {
        let want = fin.saturating_sub(t.base) as usize;
        let gaps = (0..want)
            .filter(|&i| t.seen.get(i).copied().unwrap_or(0) == 0)
            .count();
        let dups: u64 = t.seen.iter().map(|&n| n.saturating_sub(1) as u64).sum();
        (gaps, dups)
    };
    let mut readers_gaps = 0;
    let mut readers_dups = 0;
    let mut readers_order = 0;
    let mut others_closed = Vec::new();
    for c in &clients {
        let t = c.track.borrow();
        if c.role != Role::Paused && !t.closes.is_empty() {
            others_closed.push(json!({"role": format!("{:?}", c.role), "closes": t.closes}));
        }
        if c.role == Role::Reader {
            let (g, d) = gaps_dups(&t);
            readers_gaps += g;
            readers_dups += d;
            readers_order += t.order_errors;
        }
    }
    let publisher_errors: u64 = publishers.iter().map(|c| c.track.borrow().errors).sum();
    let readers_ok = readers_drained
        && readers_gaps == 0
        && readers_dups == 0
        && readers_order == 0
        && others_closed.is_empty();
    let (p_gaps, p_dups) = gaps_dups(&paused.track.borrow());
    let out = {
        let pt = paused.track.borrow();
        let first_close = pt.closes.first().cloned();
        let rss: Vec<(f64, u64)> = samples
            .borrow()
            .iter()
            .map(|s| {
                (
                    s["t_s"].as_f64().unwrap_or(0.0),
                    s["rss_kib"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let peak = |from: f64, to: f64| {
            rss.iter()
                .filter(|(t, _)| *t >= from && *t <= to)
                .map(|(_, r)| *r)
                .max()
        };
        // When the server let go of the paused socket: the room stopped counting it, and
        // (later: after the client has read up to the close frame) its TCP end closed.
        let server_tcp_closed_at = samples.borrow().iter().find_map(|s| {
            let st = s["paused_server_tcp"]["state"].as_str();
            (s["t_s"].as_f64()? >= t_pause && st != Some("ESTABLISHED"))
                .then(|| s["t_s"].as_f64())?
        });
        let total = (args.publishers + args.receivers + 1) as u64;
        // The first poll that counted fewer sockets than the rig opened (whichever went).
        let room_dropped_at = room_polls
            .borrow()
            .iter()
            .find_map(|p| (p["connections"].as_u64()? < total).then(|| p["t_s"].as_f64())?);
        let data_mib = |n: u64| n as f64 * args.payload as f64 / (1024.0 * 1024.0);
        // RSS moves under this traffic even when nobody is paused (garbage, allocator
        // high-water marks), and while the kernel's socket buffers still take what the
        // paused socket is sent, the server holds none of it. So compare RSS slopes from
        // the moment the server end's send queue stopped growing to the end of
        // publishing, against the same stretch of the control phase.
        let rss_at = |t: f64| {
            rss.iter()
                .find(|(ts, _)| *ts >= t)
                .map(|(_, r)| *r as f64 / 1024.0)
        };
        let send_queue: Vec<(f64, u64)> = samples
            .borrow()
            .iter()
            .filter_map(|s| {
                let t = s["t_s"].as_f64()?;
                let q = s["paused_server_tcp"]["unsent_or_unacked_bytes"].as_u64()?;
                (t >= t_pause && t <= t_published).then_some((t, q))
            })
            .collect();
        let queue_max = send_queue.iter().map(|(_, q)| *q).max().unwrap_or(0);
        let full_at = send_queue
            .iter()
            .find(|(_, q)| queue_max > 0 && *q as f64 >= 0.95 * queue_max as f64)
            .map(|(t, _)| *t);
        let from = full_at.unwrap_or(t_pause);
        let slope =
            |a: f64, b: f64| Some((rss_at(b)? - rss_at(a)?) / (b - a)).filter(|_| b - a > 0.5);
        let slope_paused = slope(from, t_published);
        let slope_control =
            control_start.and_then(|c0| slope(c0 + (from - t_pause), c0 + args.duration));
        let lat = |h: &RefCell<Histogram<u64>>| pct(&h.borrow());
        let ok = readers_ok && publisher_errors == 0 && p_gaps == 0 && p_dups == 0 && recovered;
        json!({
            "scenario": "slow",
            "ok": ok,
            "publishers": args.publishers,
            "receivers": args.receivers,
            "rate": args.rate,
            "payload": args.payload,
            "duration": args.duration,
            "warmup": args.warmup,
            "receipts_advertised": receipts_advertised,
            "paused_sends_receipts": args.paused_receipts,
            "paused_welcome": paused_welcome.map(|w| json!({"seq": w.seq, "epoch": w.epoch, "receipts": w.receipts})),
            "published": published,
            "published_during_pause": frames,
            "data_published_during_pause_mib": data_mib(frames),
            "final_seq": fin,
            "send_lag_max_ms": send_lag_ms,
            "times": {
                "pause_s": t_pause, "published_s": t_published, "resume_s": t_resume,
                "recovered_s": t_recovered,
            },
            "rss": {
                "start_kib": rss_start,
                "at_pause_kib": rss_pause,
                "at_resume_kib": rss_resume,
                "peak_paused_kib": peak(t_pause, t_resume),
                "peak_kib": peak(t_pause, f64::INFINITY),
                "at_recovered_kib": rss_recovered,
                "after_kib": rss_after,
                "after_secs": args.after_secs,
                "growth_in_pause_kib": peak(t_pause, t_resume).map(|p| p as i64 - rss_pause as i64),
                "growth_to_resume_kib": rss_resume as i64 - rss_pause as i64,
                "server_send_queue_max_bytes": queue_max,
                "kernel_buffers_full_after_pause_s": full_at.map(|t| t - t_pause),
                "slope_paused_mib_per_s": slope_paused,
                "slope_control_mib_per_s": slope_control,
                "paused_data_rate_mib_per_s": args.rate * args.payload as f64 / (1024.0 * 1024.0),
            },
            "control": control,
            "readers": {
                "ok": readers_ok,
                "drained": readers_drained,
                "latency": lat(&sh.reader_lat),
                "gaps": readers_gaps,
                "duplicates": readers_dups,
                "order_errors": readers_order,
                "others_closed": others_closed,
            },
            "publishers_latency": lat(&sh.publisher_lat),
            "publisher_errors": publisher_errors,
            "paused": {
                "seq_at_pause": seq_at_pause,
                "receipts_sent_before_pause": receipts_before_pause,
                "receipts_sent": pt.receipts_sent,
                "open_at_resume": paused_open_at_resume,
                "closed": closed_first,
                "first_close": first_close,
                "closes": pt.closes,
                "server_tcp_closed_after_pause_s": server_tcp_closed_at.map(|t| t - t_pause),
                "room_dropped_after_pause_s": room_dropped_at.map(|t| t - t_pause),
            "closed_before_pause": pt.closes.first().and_then(|c| c["at_s"].as_f64()).is_some_and(|t| t < t_pause),
                "caught_up_in_place": in_place && !closed_first && recovered,
                "reconnects": reconnects,
                "recovered": recovered,
                "gaps": p_gaps,
                "duplicates": p_dups,
                "order_errors": pt.order_errors,
                "latency": lat(&sh.paused_lat),
            },
            "samples": *samples.borrow(),
            "room_connections": *room_polls.borrow(),
        })
    };
    for c in clients.iter().chain(extra_clients.iter()) {
        let _ = c.ctl.send(Ctl::Close);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    out
}
