-- certhook: the API handlers use (DESIGN §5). The work is done in C (certhook.core);
-- this module only gathers it under one name.
--
--   local certhook = require "certhook"
--   certhook.log.info("dcv failing", { hostname = event.hostname })
local core = require "certhook.core"
local once_core = core.once
local pack, unpack = table.pack, table.unpack

local M = {
  log = core.log,         -- debug/info/warn/error(message [, fields]): one JSON line each
  http = core.http,       -- request{url=, method=, headers=, body=, json=, timeout=}, get, post
  exec = core.exec,       -- exec{argv=, stdin=, env=, timeout=}: run a program without blocking
  state = core.state,     -- get, set(key, value [, ttl]), delete, incr(key [, by]), keys(prefix)
  time = core.time,       -- iso8601([t]), now(), parse(s)
  tls = core.tls,         -- probe(host [, {port=, sni=, timeout=, ca_file=}]): the served certificate
  certs = core.certs,     -- get(key, certificate id or hostname), list{expiring_within=, status=, state=, limit=}
  json = require "cjson", -- lua-cjson
  version = core.version,
}

-- once(key, fn, ...) -> fn's results: fn runs to success at most once per key, ever (retries,
-- replays, reloads, restarts: the journal keeps the key and fn's results). A call while the key
-- runs in another delivery raises (that delivery is retried, and then gets the results); a
-- failing fn is not recorded and raises its error. Results are stored as JSON.
function M.once(key, fn, ...)
  if type(key) ~= "string" or key == "" then error("certhook.once: the key must be a non-empty string", 2) end
  if type(fn) ~= "function" then error("certhook.once: fn must be a function", 2) end
  local done, results = once_core.get(key)
  if done == nil then error("certhook.once: " .. results, 2) end
  if not done then
    local how, until_at = once_core.claim(key)
    if how == nil then error("certhook.once: " .. until_at, 2) end
    if how == "held" then
      error(("certhook.once: %s is running in another delivery (its claim lasts until %s); this one is retried")
        :format(key, core.time.iso8601(until_at)), 2)
    end
    if how == "claimed" then
      local r = pack(pcall(fn, ...))
      if not r[1] then
        once_core.release(key)
        error(r[2], 0)
      end
      results = { n = r.n - 1 }
      for i = 2, r.n do results[tostring(i - 1)] = r[i] end
      local stored, msg = pcall(once_core.done, key, results)
      if not stored then -- fn ran: it must not run again, even though its results cannot be kept
        once_core.done(key, { n = 0 })
        error(msg, 2)
      end
      return unpack(r, 2, r.n)
    end
    done, results = once_core.get(key) -- "done": another delivery finished it meanwhile
    if not done then error("certhook.once: " .. tostring(results), 2) end
  end
  local out = {}
  for i = 1, results.n or 0 do out[i] = results[tostring(i)] end
  return unpack(out, 1, results.n or 0)
end
return M
