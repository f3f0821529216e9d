-- Pages a human only when it matters: the expiry watchdog says a renewal is overdue (it warned
-- at one threshold and the next passed with no renewal), or a certificate expired with no newer
-- one. Upcoming expiries are left to other handlers (a Slack note, a ticket). Each page goes
-- out once per event, whatever retries or replays happen (certhook.once), in PagerDuty's Events
-- API v2 format with the event id as dedup key -- any endpoint taking that JSON works.
--
--   PAGE_URL          https://events.pagerduty.com/v2/enqueue, or your own (required)
--   PAGE_ROUTING_KEY  the integration's routing key (required)
local certhook = require "certhook"
local http, time = certhook.http, certhook.time

local url = assert(os.getenv("PAGE_URL"), "overdue-page.lua: set PAGE_URL")
local key = assert(os.getenv("PAGE_ROUTING_KEY"), "overdue-page.lua: set PAGE_ROUTING_KEY")

local function page(e, summary)
  return certhook.once("page:" .. e.id, function()
    local resp, err = http.post(url, {
      routing_key = key, event_action = "trigger", dedup_key = e.id,
      payload = { summary = summary, source = e.hostname or "certhook", severity = "critical",
        custom_details = { certificate = e.certificate, event = e.id } },
    })
    if not resp then error("page not sent: " .. err) end
    if resp.status >= 300 then error(("page refused: %d %s"):format(resp.status, resp.body)) end
    return resp.status
  end)
end

local function name(e)
  return e.hostname or (e.certificate and (e.certificate.name or e.certificate.key)) or "a certificate"
end

return {
  ["certificate.renewal.overdue"] = function(e)
    local at = e.certificate and e.certificate.expires_at
    page(e, ("Renewal of %s is overdue: it expires %s"):format(name(e), at and time.iso8601(at) or "soon"))
  end,
  ["certificate.expiration.reached"] = function(e)
    if e.provider ~= "certhook" then return end -- the watchdog checked that nothing replaced it
    page(e, ("The certificate of %s has expired"):format(name(e)))
  end,
}
