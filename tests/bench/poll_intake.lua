-- Intake while a poller runs (issue 24): the 202's p99 under wrk (50 connections, 8 s windows)
-- on one server whose poller -- N Cloudflare custom hostnames, pages of 50, from the API double,
-- a run after another (interval 1) at the default rate (2 pages a second) -- is switched on and
-- off by reloads, windows alternating, after a first run that filled the inventory. Prints each
-- window and the ratios of the medians.
-- usage (from the tree): CF_API_FROZEN=1 lua5.4 tests/bench/poll_intake.lua [N [ROUNDS]]
--   (CERTHOOK, LUA_PATH as for the specs)
local Api = require "helpers.cf_api"
local Server = require "helpers.server"
local http = require "helpers.http"
local fs = require "helpers.fs"

local N, ROUNDS = tonumber(arg[1] or "10000"), tonumber(arg[2] or "3")
assert(os.getenv("CF_API_FROZEN") == "1", "run with CF_API_FROZEN=1: the double makes each page once")
local list = {}
for i = 1, N do
  list[i] = { hostname = ("h%05d.bench.example"):format(i), id = ("ch-%d"):format(i), ssl_id = ("cert-%d"):format(i),
    status = "active", expires_on = "2027-03-01T00:00:00Z" }
end
local ZONE, TOKEN = "023e105f4ecef8ad9ca31a8372d0c353", "bench-token-123456"
local api = Api.start { zone = ZONE, token = TOKEN, hostnames = list }

local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }\n'
local POLLER = ('pollers = { cf = { provider = "cloudflare", zone = %q, token = %q, interval = 1, ' ..
  'max_pages = 1000, api = %q } }\n'):format(ZONE, TOKEN, api.url)
local srv = Server.start { config = SOURCES .. POLLER }
local conf = srv.dir .. "/certhook.conf.lua"
local base = fs.read(conf)

local function poller() return http.get(srv.admin, "/readyz").json.pollers.cf end
local function switch(on)
  fs.write(conf, on and base or base:gsub("pollers = [^\n]*\n", ""))
  srv:signal("HUP")
  fs.wait_for(function()
    local p = poller()
    return (on and p ~= nil) or (not on and p == nil)
  end, 10)
  os.execute("sleep 1")
end

assert(fs.wait_for(function() local p = poller() return p and p.runs >= 1 end, 600), "no first run")
print(("first run done: %d hostnames in the inventory"):format(N))

local function wrk(tag)
  local out = fs.run(("BENCH_PAYLOAD=examples/payloads/cloudflare-validation-failed.json BENCH_RUN=%s " ..
    "wrk -t2 -c50 -d8s -s tests/bench/post.lua http://127.0.0.1:%d/hooks/cloudflare"):format(tag, srv.port))
  local rps, p99 = out:match("rps=([%d.]+).-p99_us=([%d.]+)")
  return tonumber(rps), tonumber(p99)
end

local res = { on = {}, off = {} }
for round = 1, ROUNDS do
  for _, mode in ipairs { "on", "off" } do
    switch(mode == "on")
    local r0 = #api:requests()
    local rps, p99 = wrk(mode .. round)
    print(("round %d poller %-3s rps %8.0f  p99 %7.0f us  (%d API requests in the window)"):format(
      round, mode, rps, p99, #api:requests() - r0))
    table.insert(res[mode], { rps = rps, p99 = p99 })
  end
end
local function median(t, k)
  local v = {}
  for _, r in ipairs(t) do v[#v + 1] = r[k] end
  table.sort(v)
  return v[(#v + 1) // 2]
end
print(("median p99 on/off %.2f, median rps on/off %.2f"):format(median(res.on, "p99") / median(res.off, "p99"),
  median(res.on, "rps") / median(res.off, "rps")))
srv:cleanup()
api:stop()
