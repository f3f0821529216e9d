-- Logs every event in one readable line: what happened, to which hostname, from whom.
local certhook = require "certhook"
local log, time = certhook.log, certhook.time

return {
  ["*"] = function(event)
    local cert = event.certificate or {}
    log.info(("%s %s (%s)"):format(event.type, event.hostname or "-", event.provider_type or event.provider), {
      source = event.source,
      certificate = cert.id,
      status = event.status and event.status.to,
      expires = cert.expires_at and time.iso8601(cert.expires_at),
      occurred = event.occurred_at and time.iso8601(event.occurred_at),
    })
  end,
}
