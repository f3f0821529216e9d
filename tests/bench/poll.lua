-- A poller's cost (issue 24): `certhook serve` polls N Cloudflare custom hostnames (pages of 50)
-- from the API double (tests/helpers/cf_api_server.lua); prints, for the first run (which adds
-- them all to the inventory, quiet events) and for a run that finds nothing new, the run's
-- seconds, the server's CPU seconds and the requests made.
-- usage (from the tree): lua5.4 tests/bench/poll.lua [N]   (CERTHOOK, LUA_PATH as for the specs)
local socket = require "socket"
local Api = require "helpers.cf_api"
local Server = require "helpers.server"
local http = require "helpers.http"
local fs = require "helpers.fs"

local N = tonumber(arg[1] or "10000")
local list = {}
for i = 1, N do
  list[i] = { hostname = ("h%05d.bench.example"):format(i), id = ("ch-%d"):format(i), ssl_id = ("cert-%d"):format(i),
    status = "active", expires_on = "2027-03-01T00:00:00Z" }
end
local api = Api.start { zone = "023e105f4ecef8ad9ca31a8372d0c353", token = "bench-token-123456", hostnames = list }
local srv = Server.start { config = 'sources = { cf = { provider = "cloudflare", secret = "s3cret" } }\n' ..
  ('pollers = { cf = { provider = "cloudflare", zone = "023e105f4ecef8ad9ca31a8372d0c353", ' ..
   'token = "bench-token-123456", interval = 3600, max_pages = 1000, api = %q } }\n'):format(api.url) }

local function cpu()
  local stat = fs.read(("/proc/%d/stat"):format(srv.pid))
  local fields = {}
  for f in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime (after the name: 14, 15)
end
local function poller() return http.get(srv.admin, "/readyz").json.pollers.cf end

-- One run: its span (first request to the run's end), the server's CPU, the requests made.
local function measure(label)
  local runs0, c0, r0 = poller().runs, cpu(), #api:requests()
  assert(fs.wait_for(function() return poller().runs > runs0 end, 600), "no run")
  local t1 = socket.gettime()
  fs.wait_for(function() return http.get(srv.admin, "/readyz").json.backlog == 0 end, 60)
  local reqs = api:requests()
  print(("%-30s %d hostnames: run %.2f s, server CPU %.2f s, %d requests, result %s"):format(label, N,
    t1 - reqs[r0 + 1].at, cpu() - c0, #reqs - r0, poller().result))
end

measure("first run (all quiet events)")
-- the next run, sooner: a reload with a shorter interval
fs.write(srv.dir .. "/certhook.conf.lua", (fs.read(srv.dir .. "/certhook.conf.lua"):gsub("interval = 3600", "interval = 1")))
srv:signal("HUP")
if os.getenv("PERF") then -- PERF=file: perf record the server during that run
  os.execute(("perf record -g -o '%s' -p %d >/dev/null 2>&1 & echo $! >%s/perf.pid"):format(os.getenv("PERF"), srv.pid, srv.dir))
end
measure("a run that finds nothing")
if os.getenv("PERF") then os.execute(("kill -INT $(cat %s/perf.pid); sleep 1"):format(srv.dir)) end
srv:cleanup()
api:stop()
