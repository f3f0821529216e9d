-- Posts to Slack (or anything that takes Slack's incoming-webhook JSON: Mattermost,
-- Rocket.Chat, Discord's /slack endpoint) when a certificate step fails and when a
-- certificate is about to expire or has expired.
--
--   SLACK_WEBHOOK_URL   the incoming-webhook URL (required: certhook refuses to load without it)
--
-- A failed post raises, so certhook retries it with backoff; nothing is lost while Slack is down.
local certhook = require "certhook"
local http, time = certhook.http, certhook.time

local url = assert(os.getenv("SLACK_WEBHOOK_URL"),
  "slack.lua: set SLACK_WEBHOOK_URL to the Slack incoming-webhook URL")

local function post(text)
  local resp, err = http.post(url, { text = text })
  if not resp then error("Slack unreachable: " .. err) end
  if resp.status >= 300 then error(("Slack answered %d: %s"):format(resp.status, resp.body)) end
end

local function subject(e)
  return e.hostname or (e.certificate and (e.certificate.name or e.certificate.id)) or "a certificate"
end

local function footer(e)
  return ("_%s from %s, event %s_"):format(e.provider_type or e.type, e.source, e.id)
end

return {
  ["certificate.*.failed"] = function(e)
    local phase = e.type:match("^certificate%.(%w+)%.")
    local lines = { (":rotating_light: *Certificate %s failed* for `%s`"):format(phase, subject(e)) }
    if e.error then lines[#lines + 1] = "> " .. e.error end
    local v = e.validation or {}
    if v.cname and v.cname_target then
      lines[#lines + 1] = ("The customer must create `%s CNAME %s`"):format(v.cname, v.cname_target)
    elseif v.txt_name and v.txt_value then
      lines[#lines + 1] = ("The customer must create `%s TXT %s`"):format(v.txt_name, v.txt_value)
    end
    lines[#lines + 1] = footer(e)
    post(table.concat(lines, "\n"))
  end,

  ["certificate.expiration.*"] = function(e)
    local cert = e.certificate or {}
    local at = cert.expires_at or e.expiry_date
    local when = "soon"
    if at then
      local days = math.floor((at - time.now()) / 86400 + 0.5)
      when = days >= 0 and ("in %d days (%s)"):format(days, time.iso8601(at))
        or ("%d days ago (%s)"):format(-days, time.iso8601(at))
    end
    local verb = e.type == "certificate.expiration.reached" and "expired" or "expires"
    local action = e.required_action and (" — it must be *%s*ed"):format(e.required_action) or ""
    post((":hourglass: Certificate for `%s` %s %s%s\n%s"):format(subject(e), verb, when, action, footer(e)))
  end,
}
