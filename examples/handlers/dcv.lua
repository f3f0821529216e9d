-- Domain control validation failed: log the DNS record the customer must create.
--
-- Cloudflare SSL for SaaS (CNAME or TXT validation) and IBM Certificate Manager (dns-01)
-- both arrive as certificate.validation.failed / .required with event.validation filled in.
local certhook = require "certhook"
local log = certhook.log

local function record(v)
  if v.cname and v.cname_target then
    return ("CNAME %s -> %s"):format(v.cname, v.cname_target)
  elseif v.txt_name and v.txt_value then
    return ("TXT %s = %s"):format(v.txt_name, v.txt_value)
  end
end

local function dcv(event)
  local v = event.validation or {}
  log.warn(("DCV pending for %s: customer must create %s"):format(
    event.hostname or v.domain or "?", record(v) or "the record shown in the dashboard"), {
    hostname = event.hostname,
    hostname_id = event.hostname_id,
    method = v.method,
    errors = v.errors,
  })
end

return {
  ["certificate.validation.failed"] = dcv,
  ["certificate.validation.required"] = dcv,
}
