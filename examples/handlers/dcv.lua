-- Domain control validation failed: log the DNS record the customer must create, and how many
-- times validation has failed for this hostname so far (kept in certhook.state for a week).
--
-- Cloudflare SSL for SaaS (CNAME or TXT validation) and IBM Certificate Manager (dns-01)
-- both arrive as certificate.validation.failed / .required with event.validation filled in.
local certhook = require "certhook"
local log, state = certhook.log, certhook.state

local function record(v)
  if v.cname and v.cname_target then
    return ("CNAME %s -> %s"):format(v.cname, v.cname_target)
  elseif v.txt_name and v.txt_value then
    return ("TXT %s = %s"):format(v.txt_name, v.txt_value)
  end
end

local function dcv(event)
  local v = event.validation or {}
  local host = event.hostname or v.domain or "?"
  local failures = state.incr("dcv-failures:" .. host)
  log.warn(("DCV pending for %s: customer must create %s"):format(
    host, record(v) or "the record shown in the dashboard"), {
    hostname = event.hostname,
    hostname_id = event.hostname_id,
    method = v.method,
    errors = v.errors,
    failures = failures,
  })
end

return {
  ["certificate.validation.failed"] = dcv,
  ["certificate.validation.required"] = dcv,
  -- validated: forget the count
  ["certificate.validation.succeeded"] = function(event)
    if event.hostname then state.delete("dcv-failures:" .. event.hostname) end
  end,
}
