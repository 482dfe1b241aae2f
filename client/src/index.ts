// @roomcast/client — see README.md.
export { Roomcast, type RoomcastEvents } from "./client.js";
export {
  RoomcastError,
  backoffDelay,
  closePolicy,
  handshakePolicy,
  endPolicy,
  httpRefusal,
  receiptDue,
  REFUSAL_CLOSE_CODES,
  RECEIPT_EVERY_CHARS,
  RECEIPT_EVERY_MESSAGES,
  RETRYABLE_PUBLISH_ERRORS,
  TRANSPORT_ORDER,
  type CloseAction,
  type ConnectionEnd,
} from "./policy.js";
export type * from "./types.js";
