//! One handler per client frame type (mini-redis's `cmd/`): each takes the parsed frame
//! and applies it to the room core. Parsing and validation live in `crate::protocol`
//! (`check_publish` is shared with the HTTP paths), so a handler only applies.
//!
//! * [`publish`]: durable and ephemeral publishes.
//! * [`received`]: read receipts for the slow-consumer bound.

pub mod publish;
pub mod received;
