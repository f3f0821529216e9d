-- Webhook bodies for the e2e specs: fixtures with a fresh event id, so that every post is a
-- new event (the same id twice is a duplicate).
local cjson = require "cjson"
local fs = require "helpers.fs"

local M = {}
local n = 0

-- cloudflare([kind [, opts]]) -> body, event id. kind names an SSL for SaaS fixture,
-- tests/fixtures/cloudflare/ssl.custom_hostname_certificate.<kind>.json (default
-- "validation.failed"); opts.hostname replaces data.hostname, opts.meta data.custom_metadata.
-- The certificate id is "cert-<hostname>" (one certificate per hostname), or opts.cert_id;
-- opts.created_at (ISO 8601) replaces metadata.event.created_at; opts.expires_on (ISO 8601)
-- sets data.ssl.expires_on.
function M.cloudflare(kind, opts)
  n = n + 1
  local id = ("e2e-%d-%d-%d"):format(os.time(), math.random(1e6), n)
  local body = assert(fs.read(("tests/fixtures/cloudflare/ssl.custom_hostname_certificate.%s.json")
    :format(kind or "validation.failed")))
  local placed
  body, placed = body:gsub("<<WEBHOOK_ID>", id)
  local cert_id = opts and opts.cert_id or ("cert-" .. (opts and opts.hostname or "blog.com"))
  body = body:gsub("<<CERTIFICATE_ID>", cert_id)
  if placed == 0 or (opts and (opts.hostname or opts.meta or opts.created_at or opts.expires_on)) then
    local t = cjson.decode(body)
    t.metadata.event.id = id
    if opts and opts.hostname then t.data.hostname = opts.hostname end
    if opts and opts.meta then t.data.custom_metadata = opts.meta end
    if opts and opts.created_at then t.metadata.event.created_at = opts.created_at end
    if opts and opts.expires_on then t.data.ssl.expires_on = opts.expires_on end
    body = cjson.encode(t)
  end
  return body, "cloudflare:" .. id
end

return M
