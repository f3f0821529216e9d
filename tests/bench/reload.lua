-- make bench, part 3: reload latency. For each of RELOADS edits of a handler file (atomic
-- rename, as editors and deploy tools do), the time from the rename to the first event handled
-- by the new generation, while events arrive every few milliseconds. Prints the median and
-- the spread as one markdown table row. Run by tests/bench/run.sh.
local socket = require "socket"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local RELOADS = tonumber(os.getenv("RELOADS")) or 25
local CF = { ["cf-webhook-auth"] = "s3cret" }

local function handler(v)
  return ([[
    local time = require("certhook").time
    return { ["*"] = function(e)
      local f = io.open("seen.log", "a") f:write(%d, " ", time.now(), "\n") f:close()
    end }]]):format(v)
end

local srv = Server.start {
  config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n',
  handlers = { ["h.lua"] = handler(0) },
}
local body = fs.read("tests/fixtures/cloudflare/ssl.custom_hostname_certificate.deployment.succeeded.json")
local n = 0
local function first_seen(v)
  for line in (fs.read(srv.dir .. "/seen.log") or ""):gmatch("[^\n]+") do
    local got, at = line:match("^(%d+) (%S+)$")
    if tonumber(got) == v then return tonumber(at) end
  end
end

local lat = {}
for v = 1, RELOADS do
  local path = srv.dir .. "/handlers/h.lua"
  fs.write(srv.dir .. "/handlers/.h.tmp", handler(v))
  local t0 = socket.gettime()
  assert(os.rename(srv.dir .. "/handlers/.h.tmp", path))
  local at
  repeat
    n = n + 1
    srv:post("/hooks/cloudflare", (body:gsub("<<WEBHOOK_ID>", "rl-" .. n)), CF)
    socket.sleep(0.005)
    at = first_seen(v)
  until at or socket.gettime() - t0 > 5
  lat[#lat + 1] = at and (at - t0) * 1000 or 5000
  socket.sleep(0.2)
end
srv:cleanup()
table.sort(lat)
io.write(("| %d edits by atomic rename, events every ~5 ms | median %.0f ms | min %.0f ms | p90 %.0f ms | max %.0f ms |\n")
  :format(#lat, lat[math.ceil(#lat / 2)], lat[1], lat[math.ceil(#lat * 0.9)], lat[#lat]))
