// Mints a stream ticket without calling the gateway (format: docs/tickets.md). Needs only Node's crypto.
import { createHmac } from "node:crypto";

export function mintTicket(kid: string, secret: string, tenant: string | null, session: string,
                           sub = "backend", ttlSeconds = 900): string {
  const key = Buffer.from(secret, "base64url"); // as in GATEWAY_TICKET_KEYS
  const claims = { kid, sub, tid: tenant, sid: session, exp: Math.floor(Date.now() / 1000) + ttlSeconds };
  const signingInput = "v1." + Buffer.from(JSON.stringify(claims), "utf8").toString("base64url");
  const mac = createHmac("sha256", key).update(signingInput, "ascii").digest("base64url");
  return `${signingInput}.${mac}`;
}

// node mint-ticket.js KID SECRET TENANT SESSION [TTL_SECONDS]
const [kid, secret, tenant, session, ttl] = process.argv.slice(2);
if (session !== undefined) console.log(mintTicket(kid, secret, tenant, session, "backend", Number(ttl ?? 900)));
