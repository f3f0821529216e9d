-- One of the nine handler files make bench loads besides bench.lua (DESIGN §10 asks for ten):
-- real code for another type, which the benchmark's events never match.
local certhook = require "certhook"

return {
  ["certificate.deployment.failed"] = function(event)
    local n = certhook.state.incr("seen:" .. (event.hostname or "?"))
    certhook.log.info("certificate.deployment.failed", { hostname = event.hostname, times = n })
  end,
}
