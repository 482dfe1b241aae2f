//! Roomcast: authenticated WebSocket rooms on hibernating Durable Objects, with a gapless
//! per-room sequence, exactly-once fan-out and a signed HTTP API for backends.
//!
//! # Layout
//!
//! * [`router`]: the Worker; routes, and authentication before any Durable Object is touched.
//! * [`auth`]: JWT and HMAC verification, claims, room permissions (no `worker` types).
//! * [`protocol`]: frames and name formats (no `worker` types).
//! * [`config`]: typed configuration with documented defaults.
//! * [`error`]: the one error enum and its mapping to statuses, codes and close codes.
//! * [`room`]: the Room Durable Object, glue over [`room::core`] (the room's rules as a
//!   state machine: events in, effects out) and [`room::log`] (sequence and dedup in SQLite).
//! * [`runtime`]: clock, randomness, responses and log lines at the runtime's edge.
//! * [`transport`]: SSE, long-poll and HTTP publish for clients without WebSockets, relayed
//!   to the room over an internal hibernatable WebSocket.

pub mod auth;
pub mod config;
pub mod error;
pub mod protocol;
pub mod room;
pub mod router;
pub mod runtime;
pub mod transport;
