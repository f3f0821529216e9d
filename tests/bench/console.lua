-- The console's first load (README "Console"): a server whose journal holds EVENTS events
-- (10,000) about CERTS certificates (1,000), then the page at / opened ROUNDS times in Chromium
-- (tests/helpers/browser.cjs; make test installs it) -- each time a new browser, whose first
-- page is opened once (a browser's first page is slower) and then again: that second navigation
-- is measured: from the navigation's start to the page's performance mark console-drawn (the
-- certificates' rows in the DOM), and from the HTML parsed (domInteractive: until then it is
-- Chromium's part, the page cannot act) to that mark (the page's part: its requests, its
-- script); and the bytes of every response that took (HTML, script, stylesheet, icon, /api/certificates);
-- then the admin listener's side alone: those 5 requests with curl, one connection each.
--
-- BEFORE=<another build's certhook-dev> (e.g. a checkout of the previous commit, built): the
-- same journal copied to a server of that build too, and every round opens both, alternately
-- (which one goes first alternates too), so the two are measured under the same noise; prints
-- both and the median of the rounds' ratios. Prints medians and the spread. Not part of make
-- bench (it needs the browser); run from the top of the tree:
--   CERTHOOK=$PWD/build/certhook-dev LUA_PATH="$PWD/tests/?.lua;;" lua5.4 tests/bench/console.lua
--   BEFORE=/path/to/previous/build/certhook-dev ROUNDS=21 ... lua5.4 tests/bench/console.lua
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local EVENTS = tonumber(os.getenv("EVENTS")) or 10000
local CERTS = tonumber(os.getenv("CERTS")) or 1000
local ROUNDS = tonumber(os.getenv("ROUNDS")) or 15
local BEFORE = os.getenv("BEFORE")
local CF = { ["cf-webhook-auth"] = "s3cret" }
local CONFIG = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'
local HANDLERS = { ["h.lua"] = 'return { ["*"] = function() end }' }

local srv = Server.start { config = CONFIG, handlers = HANDLERS }
local kinds = { "issuance.succeeded", "deployment.succeeded", "renewal.succeeded", "validation.failed" }
local t0 = socket.gettime()
math.randomseed(23)
for i = 1, EVENTS do
  local body = events.cloudflare(kinds[i % #kinds + 1], { hostname = ("host%04d.example.com"):format(i % CERTS),
    expires_on = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + math.random(-10, 365) * 86400) })
  assert(srv:post("/hooks/cloudflare", body, CF).status == 202)
end
io.stderr:write(("seeded %d events in %.1f s\n"):format(EVENTS, socket.gettime() - t0))
local builds = { { name = "this build", srv = srv } }
if BEFORE then -- the same journal for the other build: copied while this server is stopped
  srv:stop()
  local dir = fs.tmpdir()
  assert(os.execute(("cp -a '%s/data' '%s/data'"):format(srv.dir, dir)))
  os.remove(dir .. "/data/certhook.running")
  srv:launch()
  local ours = Server.certhook
  Server.certhook = BEFORE
  local ok, before = pcall(Server.start, { dir = dir, config = CONFIG, handlers = HANDLERS })
  Server.certhook = ours
  assert(ok, before)
  builds[2] = { name = "before (" .. BEFORE .. ")", srv = before }
end
local certs = cjson.decode(require("helpers.http").request(srv.admin, "GET", "/api/certificates?limit=1").body).total

local steps = cjson.encode {
  { ["goto"] = "/" }, { wait_route = true }, -- a browser started: its first page is slower
  { ["goto"] = "/" }, { wait_route = true },
  { eval = "performance.getEntriesByName('console-drawn')[0].startTime", as = "ms" },
  { eval = "document.querySelectorAll('#certificates tbody tr').length", as = "rows" },
  { eval = "performance.getEntriesByType('navigation')[0].domInteractive", as = "parsed" },
  { eval = "JSON.stringify(performance.getEntriesByType('navigation')[0])", as = "nav" },
  { eval = "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))" ..
      ".reduce((n, e) => n + e.transferSize, 0)", as = "bytes" },
  { eval = "performance.getEntriesByType('resource').map(e => e.name.replace(location.origin, '') + ' ' + " ..
      "e.transferSize + ' B ' + Math.round(e.startTime) + '-' + Math.round(e.responseEnd) + ' ms').join(', ')", as = "what" },
}
local function median(t)
  local s = { table.unpack(t) }
  table.sort(s)
  return s[(#s + 1) // 2], s[1], s[#s]
end
local ratios = { drawn = {}, own = {} }
for _, b in ipairs(builds) do b.ms, b.bytes, b.parsed, b.own = {}, {}, {}, {} end
for round = 1, ROUNDS do
  local this = {}
  for k = 1, #builds do
    local b = builds[(k + round) % #builds + 1] -- the order alternates from round to round
    local out, err, code = fs.run(("unset LD_PRELOAD; node tests/helpers/browser.cjs http://127.0.0.1:%d '%s'")
      :format(b.srv.admin, (steps:gsub("'", "'\\''"))))
    assert(code == 0, err)
    local r = cjson.decode(out).results
    b.ms[#b.ms + 1], b.bytes[#b.bytes + 1], b.what, b.rows = r.ms, r.bytes, r.what, r.rows
    b.parsed[#b.parsed + 1], b.own[#b.own + 1] = r.parsed, r.ms - r.parsed
    this[b] = r
    if os.getenv("VERBOSE") then io.stderr:write(b.name, " ", r.ms, " ", r.what, "\n", r.nav, "\n") end
  end
  if #builds == 2 then
    local a, z = this[builds[1]], this[builds[2]]
    ratios.drawn[#ratios.drawn + 1] = a.ms / z.ms
    ratios.own[#ratios.own + 1] = (a.ms - a.parsed) / (z.ms - z.parsed)
  end
end
-- the admin listener's side: each file of the first load on a new connection (curl), in turn
local paths = { "/", "/console.js", "/console.css", "/favicon.svg", "/api/certificates" }
for _, b in ipairs(builds) do
  b.server = {}
  for _ = 1, ROUNDS do
    local total, n = 0, 0
    for _, p in ipairs(paths) do
      local out = io.popen(("curl -s -o /dev/null -w '%%{time_total} %%{size_download}' http://127.0.0.1:%d%s")
        :format(b.srv.admin, p)):read("a")
      local t, size = out:match("(%S+) (%S+)")
      total, n = total + tonumber(t), n + tonumber(size)
    end
    b.server[#b.server + 1], b.sizes = total * 1000, n
  end
end
print(("journal: %d events, %d certificates; first load of / in Chromium, %d rounds"):format(EVENTS, certs, ROUNDS))
for _, b in ipairs(builds) do
  print(b.name .. ":")
  print(("  the certificates' rows in the DOM (%d rows; console-drawn): median %.0f ms (min %.0f, max %.0f)")
    :format(b.rows, median(b.ms)))
  print(("  the HTML parsed (domInteractive: Chromium's part, before the page can act): median %.0f ms " ..
    "(min %.0f, max %.0f)"):format(median(b.parsed)))
  print(("  from there to the rows (the page's part): median %.0f ms (min %.0f, max %.0f)"):format(median(b.own)))
  print(("  bytes transferred: %d (%s)"):format(median(b.bytes), b.what))
  print(("  the admin listener answering the 5 requests (curl, one connection each): median %.1f ms " ..
    "(min %.1f, max %.1f), %d bytes of bodies"):format(select(1, median(b.server)), select(2, median(b.server)),
    select(3, median(b.server)), b.sizes))
end
if #builds == 2 then
  local function ratio(t) return ("%.2f (%.2f-%.2f)"):format(median(t)) end
  print(("this build / before, the median of the %d rounds' ratios: the rows %s, the page's part %s")
    :format(ROUNDS, ratio(ratios.drawn), ratio(ratios.own)))
  builds[2].srv:cleanup()
end
srv:cleanup()
