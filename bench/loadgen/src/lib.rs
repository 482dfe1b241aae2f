//! Shared pieces of the benchmark rig: HS256 tokens, `Roomcast-Signature`, and the
//! `/proc` readings (CPU time and RSS of a server's process tree).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Seconds since the unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hmac(secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// An HS256 user token with read+write on every room, as the product's tests mint them.
pub fn user_token(secret: &str, sub: &str, ttl_secs: i64) -> String {
    let now = unix_now();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "exp": now + ttl_secs,
        "rooms": { "*": ["read", "write"] },
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = URL_SAFE_NO_PAD.encode(hmac(secret.as_bytes(), signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

/// What the native server needs from a verified token.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `sub`.
    pub sub: String,
    /// `exp`, unix seconds.
    pub exp: i64,
}

/// Verifies an HS256 token (signature in constant time, `alg`, `exp`) and returns its
/// claims. The native peer does what every other peer does on the upgrade.
pub fn verify_token(secret: &str, token: &str, now: i64) -> Result<Claims, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token");
    };
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| "bad header")?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| "bad header")?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err("alg must be HS256");
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "bad signature")?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| "bad key")?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let claims = URL_SAFE_NO_PAD.decode(p).map_err(|_| "bad payload")?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).map_err(|_| "bad payload")?;
    let sub = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .ok_or("no sub")?
        .to_string();
    let exp = claims.get("exp").and_then(|v| v.as_i64()).ok_or("no exp")?;
    if now > exp + 30 {
        return Err("expired");
    }
    Ok(Claims { sub, exp })
}

/// `Roomcast-Signature` value for a request (docs/protocol.md §7).
pub fn signature(secret: &str, method: &str, path_and_query: &str, body: &str, t: i64) -> String {
    let msg = format!("{t}\n{method}\n{path_and_query}\n{body}");
    format!(
        "t={t},v1={}",
        hex::encode(hmac(secret.as_bytes(), msg.as_bytes()))
    )
}

/// A process and all its descendants (threads are counted by their process).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let path = task.path().join("children");
                if let Ok(children) = std::fs::read_to_string(path) {
                    for c in children.split_whitespace() {
                        if let Ok(c) = c.parse::<u32>() {
                            if !out.contains(&c) {
                                out.push(c);
                            }
                        }
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// Clock ticks per second for `/proc/<pid>/stat` times (USER_HZ; 100 on Linux).
pub const CLK_TCK: f64 = 100.0;

/// `utime + stime` of one process, in clock ticks.
fn cpu_ticks_of(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; fields after its closing paren are plain.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let stime = fields
        .get(12)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    utime + stime
}

/// Server CPU seconds (user + system) of a process tree so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    process_tree(pid).into_iter().map(cpu_ticks_of).sum::<u64>() as f64 / CLK_TCK
}

/// Resident set size of a process tree, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    process_tree(pid)
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = user_token("s3cret", "alice", 60);
        let c = verify_token("s3cret", &t, unix_now()).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(verify_token("other", &t, unix_now()).is_err());
        assert!(verify_token("s3cret", &t, unix_now() + 1000).is_err());
    }

    #[test]
    fn signature_known_answer() {
        // Same construction as miniflare/helpers.mjs `signature`.
        let s = signature("k", "POST", "/v1/rooms/a/messages", "{}", 1);
        assert!(s.starts_with("t=1,v1="));
        assert_eq!(s.len(), "t=1,v1=".len() + 64);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        assert!(cpu_seconds(me) >= 0.0);
    }
}
