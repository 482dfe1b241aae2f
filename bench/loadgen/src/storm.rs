//! Scenario 8, deploy storm (issue 14): N sockets in one room with traffic flowing, then
//! workerd restarts over its persisted storage (what a deploy does to every room: all
//! sockets drop at once, storage survives). Every client reproduces the SDK's reconnect
//! policy (`client/src/policy.ts` `backoffDelay`: full jitter, a delay uniform in
//! `[0, min(cap, base·2^attempt))`, `attempt` counting consecutive failures from 0) and,
//! with `--resume`, reconnects with `?since=<last seq>&epoch=<epoch>` (protocol §6). The
//! publisher reproduces the SDK's outbox: publishes made while offline wait, and publishes
//! not acknowledged when the socket dropped are sent again with the same id (exactly once
//! by dedup).
//!
//! Reported: time from the restart until each client is recovered (its new `welcome`
//! arrived and it has every message up to that welcome's `seq`), p50/p99/max; server CPU
//! of the new workerd per reconnect; failed handshakes (refused while the server was down,
//! and refused or broken after it was up); and whether every client got every message
//! exactly once and in order (resume), or how many it missed (plain reconnect).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::{cost, hist, open_socket, parse_frames, payload, pct, room_info, storage_rows, Rig};
use loadgen::cpu_seconds;

#[derive(Args, Clone)]
pub struct StormArgs {
    /// Receiving sockets in the room (one user each); one more socket publishes.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Messages per second published into the room throughout.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds of traffic before the restart.
    #[arg(long, default_value_t = 3.0)]
    before_secs: f64,
    /// Seconds of traffic after every client has recovered.
    #[arg(long, default_value_t = 2.0)]
    after_secs: f64,
    /// Give up waiting for recovery after this many seconds.
    #[arg(long, default_value_t = 90.0)]
    recovery_timeout: f64,
    /// Backoff base and cap (the SDK's defaults).
    #[arg(long, default_value_t = 500)]
    base_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    cap_ms: u64,
    /// A connection that lived this long resets the failure count (the SDK's `stableMs`).
    #[arg(long, default_value_t = 10_000)]
    stable_ms: u64,
    /// Reconnect with `since`/`epoch` (protocol §6); without it, a plain reconnect.
    #[arg(long)]
    resume: bool,
    /// Extra query parameters for every socket (e.g. `presence=off`).
    #[arg(long, default_value = "")]
    query: String,
    /// PID of bench/peers/workerd.mjs: SIGUSR2 restarts its workerd on the same port.
    #[arg(long)]
    launcher_pid: u32,
}

/// One receiving client.
#[derive(Default)]
struct Client {
    last_seq: u64,
    epoch: Option<String>,
    initial_seq: u64,
    received: u64,
    /// Messages whose `seq` was not above the last one (a repeat or a reordering).
    repeats: u64,
    /// Messages skipped within one connection (seq jumped).
    gaps_live: u64,
    /// Messages missed across a reconnect that did not recover them (no resume).
    missed_at_reconnect: u64,
    reconnects: u64,
    resumes_recovered: u64,
    resumes_not_recovered: u64,
    /// `seq` of the welcome after the restart: recovered once `last_seq` reaches it.
    target: Option<u64>,
    recovered_at: Option<Instant>,
    connected: bool,
    closes: Vec<String>,
}

struct Shared {
    rig: Rc<Rig>,
    args: StormArgs,
    room: String,
    restart_at: Cell<Option<Instant>>,
    /// First welcome after the restart, and the new server's CPU seconds at that moment.
    first_up: Cell<Option<(Instant, f64)>>,
    new_pid: Cell<u32>,
    stop: Cell<bool>,
    reconnect_handshake: RefCell<Histogram<u64>>,
    refused_down: Cell<u64>,
    failed_up: Cell<u64>,
    failed_samples: RefCell<Vec<String>>,
    rng: Cell<u64>,
}

impl Shared {
    fn random(&self) -> f64 {
        // xorshift64*: enough for jitter.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `client/src/policy.ts` `backoffDelay`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = (self.args.cap_ms as f64)
            .min(self.args.base_ms as f64 * 2f64.powi(attempt.min(30) as i32));
        Duration::from_millis((self.random() * ceiling).floor() as u64)
    }

    fn query(&self, resume: Option<(u64, &str)>) -> Option<String> {
        let mut parts = Vec::new();
        if !self.args.query.is_empty() {
            parts.push(self.args.query.clone());
        }
        if let Some((since, epoch)) = resume {
            parts.push(format!("since={since}&epoch={epoch}"));
        }
        (!parts.is_empty()).then(|| parts.join("&"))
    }

    fn handshake_failed(&self, e: &str) {
        if e.starts_with("tcp:") {
            self.refused_down.set(self.refused_down.get() + 1);
        } else {
            self.failed_up.set(self.failed_up.get() + 1);
            let mut s = self.failed_samples.borrow_mut();
            if s.len() < 5 {
                s.push(e.to_string());
            }
        }
    }

    fn note_up(&self) {
        if self.restart_at.get().is_some() && self.first_up.get().is_none() {
            self.first_up
                .set(Some((Instant::now(), cpu_seconds(self.new_pid.get()))));
        }
    }
}

fn on_messages(c: &mut Client, text: &str) {
    let mut n = 0u64;
    for f in parse_frames(text) {
        if f.ty != "message" {
            continue;
        }
        let Some(seq) = f.seq else { continue };
        n += 1;
        if seq <= c.last_seq {
            c.repeats += 1;
            continue;
        }
        if seq > c.last_seq + 1 {
            c.gaps_live += seq - c.last_seq - 1;
        }
        c.last_seq = seq;
        c.received += 1;
    }
    if n > 0 {
        cost(|k| k.deliveries += n);
    }
    if c.recovered_at.is_none() && c.target.is_some_and(|t| c.last_seq >= t) {
        c.recovered_at = Some(Instant::now());
    }
}

async fn client_loop(
    sh: Rc<Shared>,
    c: Rc<RefCell<Client>>,
    user: String,
    first: Rc<Semaphore>,
    ready: Rc<Cell<usize>>,
) {
    let mut attempt = 0u32;
    let mut initial = true;
    loop {
        if sh.stop.get() {
            return;
        }
        let resume = if initial || !sh.args.resume {
            None
        } else {
            let c = c.borrow();
            c.epoch.clone().map(|e| (c.last_seq, e))
        };
        let query = sh.query(resume.as_ref().map(|(s, e)| (*s, e.as_str())));
        let opened = if initial {
            let _permit = first.acquire().await.expect("semaphore open");
            open_socket(&sh.rig, &sh.room, &user, query.as_deref()).await
        } else {
            open_socket(&sh.rig, &sh.room, &user, query.as_deref()).await
        };
        let (ws, welcome, took) = match opened {
            Ok((ws, w, took, _)) => (ws, w, took),
            Err(e) => {
                if initial {
                    c.borrow_mut().closes.push(format!("initial connect: {e}"));
                    ready.set(ready.get() + 1);
                    return;
                }
                sh.handshake_failed(&e);
                tokio::time::sleep(sh.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        let opened_at = Instant::now();
        {
            let mut cl = c.borrow_mut();
            cl.connected = true;
            if initial {
                cl.initial_seq = welcome.seq;
                cl.last_seq = welcome.seq;
                cl.epoch = welcome.epoch.clone();
                ready.set(ready.get() + 1);
            } else {
                cl.reconnects += 1;
                let _ = sh
                    .reconnect_handshake
                    .borrow_mut()
                    .record((took.as_micros() as u64).max(1));
                let recovered = welcome.resume.get("recovered") == Some(&Value::Bool(true));
                if resume.is_some() {
                    if recovered {
                        cl.resumes_recovered += 1;
                    } else {
                        cl.resumes_not_recovered += 1;
                    }
                }
                if !recovered && welcome.seq > cl.last_seq {
                    cl.missed_at_reconnect += welcome.seq - cl.last_seq;
                    cl.last_seq = welcome.seq;
                }
                if sh.restart_at.get().is_some() && cl.target.is_none() {
                    cl.target = Some(welcome.seq);
                }
                if welcome.epoch.is_some() {
                    cl.epoch = welcome.epoch.clone();
                }
            }
            on_messages(&mut cl, &welcome.raw);
        }
        if !initial {
            sh.note_up();
        }
        initial = false;
        let (mut sink, mut stream) = ws.split();
        let why = loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(Message::Text(t))) => on_messages(&mut c.borrow_mut(), &t),
                    Some(Ok(Message::Close(cf))) => break format!("close {:?}", cf.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("error {e}"),
                    None => break "eof".to_string(),
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if sh.stop.get() {
                        let _ = tokio::time::timeout(Duration::from_millis(50), sink.close()).await;
                        return;
                    }
                }
            }
        };
        {
            let mut cl = c.borrow_mut();
            cl.connected = false;
            if cl.closes.len() < 4 {
                cl.closes.push(why);
            }
        }
        if opened_at.elapsed() >= Duration::from_millis(sh.args.stable_ms) {
            attempt = 0;
        }
        if sh.stop.get() {
            return;
        }
        tokio::time::sleep(sh.backoff(attempt)).await;
        attempt += 1;
    }
}

/// The publisher's outbox and what the room acknowledged.
#[derive(Default)]
struct Outbox {
    next_k: usize,
    /// Not yet sent on the current socket.
    queue: VecDeque<usize>,
    /// Sent, waiting for the ack (acks come back in order).
    unacked: VecDeque<usize>,
    /// seq acknowledged per k (0 = not yet).
    acked: Vec<u64>,
    duplicates_acked: u64,
    /// (k, seq) of the first duplicate acks.
    duplicate_detail: Vec<(usize, u64)>,
    resent: u64,
    errors: u64,
    reconnects: u64,
    first_seq: Option<u64>,
    publishing: bool,
}

async fn publisher_loop(sh: Rc<Shared>, ob: Rc<RefCell<Outbox>>, data: Rc<String>) {
    let interval = Duration::from_secs_f64(1.0 / sh.args.rate);
    let mut next_tick = tokio::time::Instant::now();
    let mut attempt = 0u32;
    let mut retry_at = tokio::time::Instant::now();
    let mut ws: Option<super::Ws> = None;
    let frame =
        |k: usize| format!(r#"{{"type":"publish","id":"s.{k}","event":"bench","data":{data}}}"#);
    loop {
        if sh.stop.get() {
            if let Some(mut w) = ws.take() {
                let _ = tokio::time::timeout(Duration::from_millis(50), w.close(None)).await;
            }
            return;
        }
        // Flush the outbox on a live socket.
        if let Some(w) = ws.as_mut() {
            let mut broke = false;
            loop {
                let Some(k) = ob.borrow_mut().queue.pop_front() else {
                    break;
                };
                ob.borrow_mut().unacked.push_back(k);
                cost(|c| c.ws_in += 1);
                if w.send(Message::text(frame(k))).await.is_err() {
                    broke = true;
                    break;
                }
            }
            if broke {
                ws = None;
                requeue(&ob);
                retry_at = tokio::time::Instant::now() + sh.backoff(attempt);
                attempt += 1;
                continue;
            }
        }
        let publishing = ob.borrow().publishing;
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick), if publishing => {
                let mut o = ob.borrow_mut();
                if !o.publishing {
                    continue; // stopped while this tick was armed
                }
                let k = o.next_k;
                o.next_k += 1;
                o.acked.push(0);
                o.queue.push_back(k);
                next_tick += interval;
            }
            _ = tokio::time::sleep_until(retry_at), if ws.is_none() => {
                match open_socket(&sh.rig, &sh.room, "publisher", sh.query(None).as_deref()).await {
                    Ok((w, welcome, _, _)) => {
                        let mut o = ob.borrow_mut();
                        if o.first_seq.is_none() {
                            o.first_seq = Some(welcome.seq);
                        } else {
                            o.reconnects += 1;
                        }
                        ws = Some(w);
                        attempt = 0;
                    }
                    Err(e) => {
                        sh.handshake_failed(&e);
                        retry_at = tokio::time::Instant::now() + sh.backoff(attempt);
                        attempt += 1;
                    }
                }
            }
            m = async { ws.as_mut().expect("guarded").next().await }, if ws.is_some() => {
                match m {
                    Some(Ok(Message::Text(t))) => {
                        for f in parse_frames(&t) {
                            match f.ty.as_ref() {
                                "ack" => {
                                    let mut o = ob.borrow_mut();
                                    let Some(k) = o.unacked.pop_front() else { o.errors += 1; continue };
                                    if f.id.as_deref() != Some(format!("s.{k}").as_str()) {
                                        o.errors += 1;
                                    }
                                    if f.duplicate == Some(true) {
                                        o.duplicates_acked += 1;
                                        if o.duplicate_detail.len() < 10 {
                                            o.duplicate_detail.push((k, f.seq.unwrap_or(0)));
                                        }
                                    } else {
                                        cost(|c| c.messages += 1);
                                    }
                                    o.acked[k] = f.seq.unwrap_or(0);
                                }
                                "error" => {
                                    // Refused publish: send it again later.
                                    let mut o = ob.borrow_mut();
                                    o.errors += 1;
                                    if let Some(k) = o.unacked.pop_front() {
                                        o.queue.push_back(k);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        ws = None;
                        requeue(&ob);
                        retry_at = tokio::time::Instant::now() + sh.backoff(attempt);
                        attempt += 1;
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Publishes in flight when the socket dropped go first on the next one, in order.
fn requeue(ob: &RefCell<Outbox>) {
    let mut o = ob.borrow_mut();
    let mut back: Vec<usize> = o.unacked.drain(..).collect();
    o.resent += back.len() as u64;
    back.extend(o.queue.drain(..));
    o.queue = back.into();
}

/// The workerd child of `launcher` other than `old` (0 when none yet).
fn workerd_child(launcher: u32, old: u32) -> u32 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == old {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(a), Some(b)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[a + 1..b];
        let ppid: u32 = stat[b + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ppid == launcher && comm.starts_with("workerd") {
            return pid;
        }
    }
    0
}

pub async fn scenario_storm(rig: Rc<Rig>, args: StormArgs) -> Value {
    let room = format!("{}-storm", rig.common.prefix);
    let n = args.n;
    let sh = Rc::new(Shared {
        rig: rig.clone(),
        room: room.clone(),
        restart_at: Cell::new(None),
        first_up: Cell::new(None),
        new_pid: Cell::new(0),
        stop: Cell::new(false),
        reconnect_handshake: RefCell::new(hist()),
        refused_down: Cell::new(0),
        failed_up: Cell::new(0),
        failed_samples: RefCell::new(Vec::new()),
        rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (rig.now_ns() | 1)),
        args: args.clone(),
    });
    // 1. Connect.
    let first = Rc::new(Semaphore::new(rig.common.connect_concurrency.max(1)));
    let ready = Rc::new(Cell::new(0usize));
    let clients: Vec<Rc<RefCell<Client>>> = (0..n)
        .map(|_| Rc::new(RefCell::new(Client::default())))
        .collect();
    let t_connect = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        tokio::task::spawn_local(client_loop(
            sh.clone(),
            c.clone(),
            format!("u{i}"),
            first.clone(),
            ready.clone(),
        ));
    }
    while ready.get() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let connected = clients.iter().filter(|c| c.borrow().connected).count();
    if connected < n {
        sh.stop.set(true);
        let samples: Vec<String> = clients
            .iter()
            .filter_map(|c| c.borrow().closes.first().cloned())
            .take(5)
            .collect();
        return json!({"scenario": "storm", "error": format!("{} of {n} sockets failed to connect", n - connected), "samples": samples});
    }
    super::settle(Duration::from_secs(60)).await;
    // 2. Traffic.
    let ob = Rc::new(RefCell::new(Outbox {
        publishing: true,
        ..Default::default()
    }));
    tokio::task::spawn_local(publisher_loop(
        sh.clone(),
        ob.clone(),
        Rc::new(payload(args.payload)),
    ));
    tokio::time::sleep(Duration::from_secs_f64(args.before_secs)).await;
    // 3. Deploy: restart workerd over its storage.
    let old_pid = rig.common.server_pid;
    let before_restart = room_info(&rig, &room).await;
    let cpu_old = cpu_seconds(old_pid);
    let t_restart = Instant::now();
    sh.restart_at.set(Some(t_restart));
    let sent = std::process::Command::new("kill")
        .args(["-USR2", &args.launcher_pid.to_string()])
        .status();
    if !sent.map(|s| s.success()).unwrap_or(false) {
        sh.stop.set(true);
        return json!({"scenario": "storm", "error": "could not signal the launcher"});
    }
    let deadline = t_restart + Duration::from_secs_f64(args.recovery_timeout);
    let mut new_pid = 0;
    while new_pid == 0 && Instant::now() < deadline {
        new_pid = workerd_child(args.launcher_pid, old_pid);
        if new_pid == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    sh.new_pid.set(new_pid);
    let t_new_pid = t_restart.elapsed().as_secs_f64();
    // 4. Recovery.
    let all_recovered = loop {
        let done = clients.iter().all(|c| c.borrow().recovered_at.is_some());
        if done {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let t_all = t_restart.elapsed();
    let cpu_recovered = cpu_seconds(new_pid);
    let mut rec = hist();
    for c in &clients {
        if let Some(at) = c.borrow().recovered_at {
            let _ = rec.record(((at - t_restart).as_micros() as u64).max(1));
        }
    }
    let reconnects: u64 = clients.iter().map(|c| c.borrow().reconnects).sum();
    // 5. Traffic after recovery, then drain.
    tokio::time::sleep(Duration::from_secs_f64(args.after_secs)).await;
    ob.borrow_mut().publishing = false;
    let drain_deadline = Instant::now() + Duration::from_secs_f64(rig.common.drain_timeout);
    while Instant::now() < drain_deadline {
        let idle = {
            let o = ob.borrow();
            o.queue.is_empty() && o.unacked.is_empty()
        };
        if idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let final_seq = ob.borrow().acked.iter().copied().max().unwrap_or(0);
    let drained = loop {
        if clients.iter().all(|c| c.borrow().last_seq >= final_seq) {
            break true;
        }
        if Instant::now() > drain_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_end = cpu_seconds(new_pid);
    let after = room_info(&rig, &room).await;
    sh.stop.set(true);
    // 6. Checks.
    let o = ob.borrow();
    let unique = o.next_k as u64;
    let unacked = o.acked.iter().filter(|&&s| s == 0).count();
    let first_seq = o.first_seq.unwrap_or(0);
    let seqs_assigned = final_seq.saturating_sub(first_seq);
    let sum = |f: &dyn Fn(&Client) -> u64| clients.iter().map(|c| f(&c.borrow())).sum::<u64>();
    let repeats = sum(&|c| c.repeats);
    let gaps_live = sum(&|c| c.gaps_live);
    let missed = sum(&|c| c.missed_at_reconnect);
    let received = sum(&|c| c.received);
    let expected: u64 = sum(&|c| final_seq.saturating_sub(c.initial_seq));
    let short = clients
        .iter()
        .filter(|c| {
            let c = c.borrow();
            c.received + c.missed_at_reconnect != final_seq.saturating_sub(c.initial_seq)
        })
        .count();
    let not_recovered_resumes = sum(&|c| c.resumes_not_recovered);
    let recovered_resumes = sum(&|c| c.resumes_recovered);
    let exactly_once = repeats == 0
        && gaps_live == 0
        && missed == 0
        && short == 0
        && drained
        && unacked == 0
        && seqs_assigned == unique;
    let (up_at, cpu_up) = sh
        .first_up
        .get()
        .map(|(t, c)| ((t - t_restart).as_secs_f64(), Some(c)))
        .unwrap_or((f64::NAN, None));
    let cpu_per_reconnect =
        cpu_up.map(|up| (cpu_recovered - up) * 1000.0 / reconnects.max(1) as f64);
    // Storage rows: the room's counters start again with its object, so add the ones
    // read before the restart.
    let rows_before = storage_rows(&before_restart);
    let rows_after = storage_rows(&after);
    if let Some((r, w)) = rows_before {
        cost(|c| {
            c.rows_extra.0 += r;
            c.rows_extra.1 += w;
        });
    }
    let collisions: Vec<Value> = {
        let mut seen: std::collections::BTreeMap<u64, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (k, &sq) in o.acked.iter().enumerate() {
            seen.entry(sq).or_default().push(k);
        }
        seen.into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(sq, v)| json!({"seq": sq, "ks": v}))
            .collect()
    };
    let last_acks: Vec<(usize, u64)> = o.acked.iter().copied().enumerate().rev().take(8).collect();
    let samples: Vec<String> = clients
        .iter()
        .filter_map(|c| {
            let c = c.borrow();
            (c.repeats + c.gaps_live > 0 || c.recovered_at.is_none()).then(|| {
                format!(
                    "last_seq {} target {:?} closes {:?}",
                    c.last_seq, c.target, c.closes
                )
            })
        })
        .take(5)
        .collect();
    json!({
        "scenario": "storm",
        // A plain reconnect (no resume) misses what was published while it was away; that
        // is reported, not a failure. Repeats, reorderings and losses within a connection are.
        "ok": all_recovered && if args.resume { exactly_once } else { repeats == 0 && gaps_live == 0 && short == 0 && drained && unacked == 0 && seqs_assigned == unique },
        "sockets": n,
        "resume": args.resume,
        "query": args.query,
        "rate": args.rate,
        "connect_secs": connect_secs,
        "restart": {
            "new_pid_after_s": t_new_pid,
            "first_welcome_after_s": up_at,
            "all_recovered": all_recovered,
            "all_recovered_after_s": t_all.as_secs_f64(),
            "recovered_clients": rec.len(),
        },
        "recovery": pct(&rec),
        "reconnects": reconnects,
        "publisher_reconnects": o.reconnects,
        "reconnect_handshake": pct(&sh.reconnect_handshake.borrow()),
        "failed_handshakes": {
            "refused_while_down": sh.refused_down.get(),
            "failed_after_up": sh.failed_up.get(),
            "samples": *sh.failed_samples.borrow(),
        },
        "server_cpu": {
            "old_workerd_secs": cpu_old,
            "new_workerd_at_first_welcome_secs": cpu_up,
            "new_workerd_at_all_recovered_secs": cpu_recovered,
            "new_workerd_at_end_secs": cpu_end,
            "ms_per_reconnect": cpu_per_reconnect,
        },
        "resumes": {"recovered": recovered_resumes, "not_recovered": not_recovered_resumes},
        "messages": {
            "unique_published": unique,
            "unacknowledged": unacked,
            "resent_after_drop": o.resent,
            "duplicate_acks": o.duplicates_acked,
            "publisher_errors": o.errors,
            "seqs_assigned": seqs_assigned,
            "duplicate_acks_k_seq": o.duplicate_detail,
            // Acked seqs that more than one id got, and the last few (k, seq).
            "seq_collisions": collisions,
            "last_acks": last_acks,
            "final_seq": final_seq,
        },
        "delivery": {
            "exactly_once_in_order": exactly_once,
            "expected": expected,
            "received": received,
            "missed_at_reconnect": missed,
            "repeats": repeats,
            "gaps_within_a_connection": gaps_live,
            "short_or_over_clients": short,
            "drained": drained,
            "delivery_ratio": if expected == 0 { 1.0 } else { received as f64 / expected as f64 },
        },
        "storage_before_restart": rows_before,
        "storage_after": rows_after,
        "problem_samples": samples,
    })
}
