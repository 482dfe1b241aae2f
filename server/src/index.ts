// @roomcast/server — see README.md.
export { Roomcast, type RoomcastOptions, type TokenSource } from "./client.js";
export { RoomcastError, WebhookVerificationError, type WebhookErrorCode } from "./errors.js";
export {
  verifyWebhook,
  parseWid,
  WidDedup,
  type RawWebhook,
  type VerifyWebhookOptions,
  type WidDedupOptions,
  type WidDedupState,
  type WidScope,
} from "./webhooks.js";
export {
  sign,
  parseSignature,
  timingSafeEqual,
  SIGNATURE_HEADER,
  DEFAULT_TOLERANCE_SECS,
  type BodyInput,
  type ParsedSignature,
  type SignInput,
} from "./signature.js";
export type * from "./types.js";
