-- certhook: the API handlers use (DESIGN §5). The work is done in C (certhook.core);
-- this module only gathers it under one name.
--
--   local certhook = require "certhook"
--   certhook.log.info("dcv failing", { hostname = event.hostname })
local core = require "certhook.core"

local M = {
  log = core.log,         -- debug/info/warn/error(message [, fields]): one JSON line each
  http = core.http,       -- request{url=, method=, headers=, body=, json=, timeout=}, get, post
  exec = core.exec,       -- exec{argv=, stdin=, env=, timeout=}: run a program without blocking
  state = core.state,     -- get, set(key, value [, ttl]), delete, incr(key [, by]), keys(prefix)
  time = core.time,       -- iso8601([t]), now(), parse(s)
  tls = core.tls,         -- probe(host [, {port=, sni=, timeout=, ca_file=}]): the served certificate
  json = require "cjson", -- lua-cjson
  version = core.version,
}

return M
