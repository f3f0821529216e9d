-- Forwards every event, as JSON, to a service of yours (a ticketing bridge, a database
-- writer, a queue's HTTP endpoint). The body is the event without `raw` unless FORWARD_RAW=1.
--
--   FORWARD_URL     where to POST (required)
--   FORWARD_TOKEN   sent as "Authorization: Bearer <token>" when set
--   FORWARD_RAW     1 to include the provider's original payload
--
-- Anything but a 2xx raises, so certhook retries with backoff (make the service idempotent:
-- the event id in the X-Certhook-Event header and the body is stable across retries).
local certhook = require "certhook"
local http = certhook.http

local url = assert(os.getenv("FORWARD_URL"), "forward.lua: set FORWARD_URL to the service's URL")
local token = os.getenv("FORWARD_TOKEN")
local with_raw = os.getenv("FORWARD_RAW") == "1"

return {
  ["*"] = function(e)
    if not with_raw then e.raw = nil end -- the event is this handler's own copy
    local headers = { ["X-Certhook-Event"] = e.id }
    if token then headers.Authorization = "Bearer " .. token end
    local resp, err = http.post(url, e, { headers = headers, timeout = 15 })
    if not resp then error(("%s unreachable: %s"):format(url, err)) end
    if resp.status < 200 or resp.status >= 300 then
      error(("%s answered %d: %s"):format(url, resp.status, resp.body:sub(1, 200)))
    end
  end,
}
