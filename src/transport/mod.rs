//! Transports for clients that cannot use WebSockets (docs/protocol.md §13): Server-Sent
//! Events, long-polling and HTTP publish.
//!
//! The Worker holds the client's HTTP request and talks to the room over an internal
//! WebSocket that the room accepts with the Hibernation API like any client socket
//! ([`relay`]). Presence, limits, expiry, coalescing, slow-consumer receipts and fan-out
//! therefore need no second code path in the room, and a room whose only clients are SSE
//! streams or waiting polls can still be evicted: the runtime keeps the internal socket
//! open across the eviction and wakes the room for its next message.
//!
//! # Layout
//!
//! * [`frames`]: splitting the room's messages into frames (plain Rust).
//! * [`sse`]: `GET /v1/rooms/{room}/events`, the SSE encoding and the streaming relay.
//! * [`poll`]: `GET /v1/rooms/{room}/poll`, the long-poll's state machine and its relay.
//! * [`publish`]: `POST /v1/rooms/{room}/publish`, the body a client sends.
//! * [`cors`]: CORS headers and preflight answers for these routes.
//! * [`relay`]: the internal WebSocket to the room (runtime side).

pub mod cors;
pub mod frames;
pub mod poll;
pub mod publish;
pub mod relay;
pub mod sse;
