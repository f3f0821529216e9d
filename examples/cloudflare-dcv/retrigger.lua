-- After domain control validation of an SSL for SaaS custom hostname failed, asks Cloudflare
-- to check again: a PATCH of the custom hostname with its SSL settings "indicates that the
-- hostname should pass DCV". At most once per CF_DCV_EVERY seconds per hostname (kept in
-- certhook.state), since Cloudflare retries on its own schedule too.
--
--   CF_API_TOKEN    an API token with "SSL and Certificates: Edit" on the zone (required)
--   CF_DCV_EVERY    seconds between two requests for one hostname (default 3600)
--   CF_API_BASE     the API (default https://api.cloudflare.com/client/v4)
--
-- Transport errors, 429 and 5xx raise, so certhook retries with backoff; a 4xx is logged and
-- not retried: it will not get better by asking again.
local certhook = require "certhook"
local http, state, log, time = certhook.http, certhook.state, certhook.log, certhook.time

local token = assert(os.getenv("CF_API_TOKEN"),
  "retrigger.lua: set CF_API_TOKEN to a Cloudflare API token with SSL and Certificates: Edit")
local every = tonumber(os.getenv("CF_DCV_EVERY")) or 3600
local api = os.getenv("CF_API_BASE") or "https://api.cloudflare.com/client/v4"

return {
  ["ssl.custom_hostname_certificate.validation.failed"] = function(e)
    if not (e.zone and e.hostname_id) then return end -- a certificate no longer attached
    local key = "cf-dcv-retrigger:" .. e.hostname_id
    local last = state.get(key)
    if last then
      log.info("DCV check asked for recently; not again yet", { hostname = e.hostname, since = last.at })
      return
    end
    local method = e.validation and e.validation.method or "http"
    local resp, err = http.request {
      method = "PATCH",
      url = ("%s/zones/%s/custom_hostnames/%s"):format(api, e.zone, e.hostname_id),
      headers = { Authorization = "Bearer " .. token },
      json = { ssl = { method = method, type = "dv" } },
    }
    if not resp then error("Cloudflare API unreachable: " .. err) end
    if resp.status == 429 or resp.status >= 500 then
      error(("Cloudflare API answered %d"):format(resp.status))
    end
    if not (resp.json and resp.json.success) then
      log.error("Cloudflare refused the DCV check", {
        hostname = e.hostname, status = resp.status, errors = resp.json and resp.json.errors,
      })
      return
    end
    state.set(key, { at = time.iso8601(), event = e.id }, every)
    log.info("asked Cloudflare to validate again", { hostname = e.hostname, method = method })
  end,
}
