// The one check of a job uuid a caller sends, for the engine and the server.
import { validate as isUuid } from "uuid";
import { EngineError } from "./errors.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";

/** The uuid in canonical lower case; EngineError invalid-argument UUID_INVALID when it is not one. */
export function parseUuid(uuid: string, field = "uuid"): string {
  if (!isUuid(uuid)) {
    throw new EngineError("invalid-argument", REASON.UUID_INVALID, `${field}: ${quote(uuid)} is not a uuid`, field);
  }
  return uuid.toLowerCase();
}
