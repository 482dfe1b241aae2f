//! One handler per client frame type (mini-redis's `cmd/`): each takes the parsed frame
//! and applies it to the room core. Parsing and validation live in `crate::protocol`
//! (`check_publish` is shared with the HTTP paths), so a handler only applies.
//!
//! * [`publish`]: durable and ephemeral publishes.
//! * [`received`]: read receipts for the slow-consumer bound.
//!
//! And one for a request of the server API that acts on sockets:
//!
//! * [`disconnect`]: `POST /v1/rooms/{room}/disconnect` closes a user's sockets or one
//!   connection.

pub mod disconnect;
pub mod publish;
pub mod received;
