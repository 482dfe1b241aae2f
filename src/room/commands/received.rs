//! `received` frames: the client says how many WebSocket messages it has read on this
//! connection, so the room knows how much the runtime still holds for it
//! (docs/protocol.md §12). A count above what was sent is clamped, not refused: it can
//! only make the room think the client is faster than it is, which hurts that client alone.

use super::super::core::RoomCore;
use crate::protocol::Received;

impl<H: Clone> RoomCore<H> {
    /// Credits a read receipt.
    pub(in crate::room) fn on_received(&mut self, conn: &str, r: &Received) {
        if let Some(peer) = self.peer_mut(conn) {
            peer.flow.received(r.messages);
        }
    }
}
