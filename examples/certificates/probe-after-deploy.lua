-- "Deployment succeeded" does not prove the edge serves the new certificate. After a deployment
-- or renewal event, this probes the hostname (certhook.tls.probe: the certificate actually
-- served) and raises until the served certificate is the new one -- not expiring before the
-- event's certificate, and verified -- so certhook retries with backoff; after
-- delivery.max_attempts it is a dead delivery, listed by `certhook events --status dead`.
--
--   PROBE_PORT     port to probe (default 443)
--   PROBE_CA_FILE  a CA bundle for private PKIs (default: the system's)
local certhook = require "certhook"
local log, time = certhook.log, certhook.time

local port = tonumber(os.getenv("PROBE_PORT") or "443")
local ca_file = os.getenv("PROBE_CA_FILE")

local function check(e)
  if not e.hostname or e.hostname:sub(1, 1) == "*" then return end -- nothing to connect to
  local served, err, code = certhook.tls.probe(e.hostname, { port = port, ca_file = ca_file, timeout = 10 })
  if not served then error(("probe of %s failed (%s): %s"):format(e.hostname, code, err)) end
  local want = e.certificate and e.certificate.expires_at
  if want and served.not_after < want - 60 then
    error(("%s still serves the certificate expiring %s (serial %s), not the new one expiring %s")
      :format(e.hostname, time.iso8601(served.not_after), served.serial_number, time.iso8601(want)))
  end
  if not served.verified then
    error(("%s serves a certificate that does not verify: %s"):format(e.hostname, served.verify_error))
  end
  log.info("the edge serves the new certificate", { hostname = e.hostname,
    not_after = time.iso8601(served.not_after), serial = served.serial_number, protocol = served.protocol })
end

return {
  ["certificate.deployment.succeeded"] = check,
  ["certificate.renewal.succeeded"] = check,
}
