-- Tells the customer once that their DNS record is missing, not at every retry: Cloudflare
-- re-sends the DCV failure each time it checks again, and `event.repeats` counts them (1 for
-- the first failure of a run; a success in between starts it again). The notice goes to
-- NOTIFY_URL as JSON -- your ticketing system, an internal mailer, a Slack-compatible webhook
-- ({"text": ...} is included).
--
--   NOTIFY_URL   where the notice is POSTed (required)
--   REMIND_AFTER remind after this many failures in a row (default 24: about a day of retries)
local certhook = require "certhook"
local http = certhook.http

local url = assert(os.getenv("NOTIFY_URL"), "dcv-once.lua: set NOTIFY_URL to where notices go")
local remind = tonumber(os.getenv("REMIND_AFTER") or "24")

return {
  ["certificate.validation.failed"] = function(e)
    if e.stale then return end -- an old failure that arrived after a newer event
    if e.repeats ~= 1 and e.repeats % remind ~= 0 then return end
    local v = e.validation or {}
    local record = v.cname and ("%s CNAME %s"):format(v.cname, v.cname_target or "?")
      or v.txt_name and ("%s TXT %s"):format(v.txt_name, v.txt_value or "?")
    local text = ("Validation of %s failed%s. %s"):format(e.hostname or "your hostname",
      e.repeats > 1 and (" (%d checks in a row)"):format(e.repeats) or "",
      record and ("Please create the DNS record %s."):format(record) or (e.error or ""))
    local resp, err = http.post(url, { text = text, hostname = e.hostname, record = record,
      repeats = e.repeats, event = e.id })
    if not resp then error("notice not sent: " .. err) end
    if resp.status >= 300 then error(("notice refused: %d %s"):format(resp.status, resp.body)) end
  end,
}
