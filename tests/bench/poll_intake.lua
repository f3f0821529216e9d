-- Intake while a poller runs (issue 24): the 202's p99 under wrk (50 connections, 8 s) against
-- a server whose poller reads N Cloudflare custom hostnames (pages of 50) from the API double
-- without pause (interval 1: a run after another at the default rate, 2 pages a second), and
-- against the same server without the poller; alternated twice, the ratios printed.
-- usage (from the tree): lua5.4 tests/bench/poll_intake.lua [N]   (CERTHOOK, LUA_PATH as for the specs)
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
local ZONE, TOKEN = "023e105f4ecef8ad9ca31a8372d0c353", "bench-token-123456"
assert(os.getenv("CF_API_FROZEN") == "1", "run with CF_API_FROZEN=1: the double makes each page once")
local api = Api.start { zone = ZONE, token = TOKEN, hostnames = list }

local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }\n'
local POLLER = ('pollers = { cf = { provider = "cloudflare", zone = %q, token = %q, interval = 1, ' ..
  'max_pages = 1000, api = %q } }\n'):format(ZONE, TOKEN, api.url)

local function wrk(srv, tag)
  local out = fs.run(("BENCH_PAYLOAD=examples/payloads/cloudflare-validation-failed.json BENCH_RUN=%s " ..
    "wrk -t2 -c50 -d8s -s tests/bench/post.lua http://127.0.0.1:%d/hooks/cloudflare"):format(tag, srv.port))
  local rps, p99 = out:match("rps=([%d.]+).-p99_us=([%d.]+)")
  return tonumber(rps), tonumber(p99)
end

local results = { poller = {}, none = {} }
for round = 1, 2 do
  for _, mode in ipairs { "poller", "none" } do
    local srv = Server.start { config = SOURCES .. (mode == "poller" and POLLER or "") }
    if mode == "poller" then -- past the first run (its quiet events): runs that compare
      assert(fs.wait_for(function()
        local p = http.get(srv.admin, "/readyz").json.pollers.cf
        return p and p.runs >= 1
      end, 300), "no first run")
    end
    local r0 = #api:requests()
    local rps, p99 = wrk(srv, mode .. round)
    local pages = #api:requests() - r0
    local runs = mode == "poller" and http.get(srv.admin, "/readyz").json.pollers.cf.runs or 0
    print(("round %d %-6s rps %8.0f  p99 %6.0f us  (%d API requests during it, %d runs so far)"):format(
      round, mode, rps, p99, pages, runs))
    results[mode][round] = { rps = rps, p99 = p99 }
    srv:cleanup()
  end
end
for round = 1, 2 do
  local a, b = results.poller[round], results.none[round]
  print(("round %d: p99 with/without the poller %.2f, rps %.2f"):format(round, a.p99 / b.p99, a.rps / b.rps))
end
api:stop()
