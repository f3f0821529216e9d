-- Starts the Cloudflare API double (tests/helpers/cf_api_server.lua) on loopback: api.url is
-- the base URL a poller's `api` setting takes; api:set(state) replaces what it serves (see the
-- server's header), api:requests() lists what it was asked.
local cjson = require "cjson"
local fs = require "helpers.fs"

local M = {}
M.__index = M

-- Every double not yet stopped: a test that fails half-way never reaches its stop; whatever is
-- left when busted exits is stopped then (as helpers/server.lua does for servers).
local live = {}
M.reaper = setmetatable({}, { __gc = function()
  for api in pairs(live) do pcall(api.stop, api) end
end })

function M.start(state)
  local self = setmetatable({ dir = fs.tmpdir() }, M)
  self:set(state)
  os.execute(("cd '%s' && (unset LD_PRELOAD; exec lua5.4 '%s/tests/helpers/cf_api_server.lua' '%s' " ..
    "'%s/tests/fixtures/pollers/cloudflare.custom_hostnames.json' >log 2>&1 & echo $! >pid)")
    :format(self.dir, M.root, self.dir, M.root))
  local line = fs.wait_for(function() return (fs.read(self.dir .. "/out") or ""):match("listening (%d+)") end, 10)
  assert(line, "the API double did not start: " .. (fs.read(self.dir .. "/log") or ""))
  self.pid = tonumber(fs.read(self.dir .. "/pid"))
  self.port = tonumber(line)
  self.url = ("http://127.0.0.1:%d/client/v4"):format(self.port)
  live[self] = true
  return self
end

M.root = io.popen("pwd"):read("l")

function M:set(state)
  self.state = state
  fs.write(self.dir .. "/state.json.tmp", cjson.encode(state))
  os.rename(self.dir .. "/state.json.tmp", self.dir .. "/state.json")
end

-- The hostname h's status (and expiry) from now on.
function M:status(hostname, status, expires_on)
  self.state = cjson.decode(fs.read(self.dir .. "/state.json")) -- failures served are gone
  for _, h in ipairs(self.state.hostnames) do
    if h.hostname == hostname then h.status, h.expires_on = status, expires_on or h.expires_on end
  end
  self:set(self.state)
end

-- The failures answered to the next requests, in order ({status=, retry_after=}).
function M:fail(list)
  self.state = cjson.decode(fs.read(self.dir .. "/state.json"))
  self.state.fail = list
  self:set(self.state)
end

function M:requests()
  local out = {}
  for l in (fs.read(self.dir .. "/requests.jsonl") or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(l) end
  return out
end

function M:stop()
  live[self] = nil
  if self.pid then os.execute(("kill -KILL %d 2>/dev/null"):format(self.pid)) end
  fs.rm(self.dir)
end

return M
