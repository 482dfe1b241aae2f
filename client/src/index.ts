// @roomcast/client — see README.md.
export { Roomcast, type RoomcastEvents } from "./client.js";
export {
  RoomcastError,
  backoffDelay,
  closePolicy,
  handshakePolicy,
  RETRYABLE_PUBLISH_ERRORS,
  type CloseAction,
} from "./policy.js";
export type * from "./types.js";
