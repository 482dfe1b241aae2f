//! The native limit line: a single-threaded tokio-tungstenite broadcast server speaking
//! the benchmark's protocol subset (JWT on the upgrade, `welcome`, `publish` → `ack` and
//! a fan-out `message` with a per-room `seq`). Each message is serialized once and the
//! same bytes are shared by every receiver's queue (`Utf8Bytes` is reference-counted).
//!
//! No storage, no dedup, no hibernation: it is the floor the runtime-hosted peers are
//! measured against, not a product.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use loadgen::{unix_now, verify_token};

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, env = "BENCH_JWT_SECRET")]
    jwt_secret: String,
}

#[derive(Default)]
struct Room {
    seq: u64,
    next_conn: u64,
    clients: HashMap<u64, mpsc::UnboundedSender<Message>>,
}

type Rooms = Rc<RefCell<HashMap<String, Room>>>;

#[derive(Deserialize)]
struct Publish<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    id: &'a str,
    event: &'a str,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn main() {
    let cli = Cli::parse();
    // Exit with the rig: bench/run.mjs holds our stdin open.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&cli.listen).await.expect("bind");
        // The launcher reads this line to learn the port.
        println!(
            "{{\"listening\":\"{}\"}}",
            listener.local_addr().expect("addr")
        );
        let rooms: Rooms = Rc::default();
        let secret = Rc::new(cli.jwt_secret);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::task::spawn_local(serve(tcp, rooms.clone(), secret.clone()));
        }
    });
}

async fn serve(tcp: TcpStream, rooms: Rooms, secret: Rc<String>) {
    let mut who: Option<(String, String)> = None;
    // The callback's types are tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let reject = |code: StatusCode, msg: &str| {
            let mut r = ErrorResponse::new(Some(format!(
                r#"{{"error":{{"code":"unauthorized","message":"{msg}"}}}}"#
            )));
            *r.status_mut() = code;
            r
        };
        let path = req.uri().path();
        let room = path
            .strip_prefix("/v1/rooms/")
            .and_then(|r| r.strip_suffix("/ws"))
            .filter(|r| !r.is_empty() && !r.contains('/'))
            .ok_or_else(|| reject(StatusCode::NOT_FOUND, "no such route"))?;
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| reject(StatusCode::UNAUTHORIZED, "missing token"))?;
        let claims = verify_token(&secret, token, unix_now())
            .map_err(|e| reject(StatusCode::UNAUTHORIZED, e))?;
        who = Some((room.to_string(), claims.sub));
        Ok(resp)
    };
    // 8 KiB read buffers (tungstenite's default is 128 KiB a socket), so memory per idle
    // socket is comparable to the other peers'.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    let Some((room_name, user)) = who else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let (conn, seq) = {
        let mut rooms = rooms.borrow_mut();
        let room = rooms.entry(room_name.clone()).or_default();
        room.next_conn += 1;
        let conn = room.next_conn;
        room.clients.insert(conn, tx.clone());
        (conn, room.seq)
    };
    let welcome = format!(
        r#"{{"type":"welcome","room":"{room_name}","conn":"c_{conn}","user":"{user}","seq":{seq}}}"#
    );
    let _ = tx.send(Message::text(welcome));
    let writer = tokio::task::spawn_local(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            // Write out everything queued so far in one go.
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        if text.as_str() == "ping" {
            let _ = tx.send(Message::text("pong"));
            continue;
        }
        let Ok(p) = serde_json::from_str::<Publish>(text.as_str()) else {
            let _ = tx.send(Message::text(
                r#"{"type":"error","code":"bad_frame","message":"expected a publish frame"}"#,
            ));
            continue;
        };
        if p.ty != "publish" {
            continue;
        }
        let mut rooms = rooms.borrow_mut();
        let Some(room) = rooms.get_mut(&room_name) else {
            break;
        };
        room.seq += 1;
        let seq = room.seq;
        let data = p.data.map_or("null", RawValue::get);
        let frame: Utf8Bytes = format!(
            r#"{{"type":"message","seq":{seq},"id":"{}","event":"{}","data":{data},"from":{{"user":"{user}","conn":"c_{conn}"}}}}"#,
            p.id, p.event
        )
        .into();
        for (&other, client) in &room.clients {
            if other != conn {
                // Cloning a Message::Text clones an Arc'd buffer, not the bytes.
                let _ = client.send(Message::Text(frame.clone()));
            }
        }
        let _ = tx.send(Message::text(format!(
            r#"{{"type":"ack","id":"{}","seq":{seq},"duplicate":false}}"#,
            p.id
        )));
    }
    if let Some(room) = rooms.borrow_mut().get_mut(&room_name) {
        room.clients.remove(&conn);
    }
    drop(tx);
    writer.abort();
}
