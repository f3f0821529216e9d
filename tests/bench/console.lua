-- The console's first load (README "Console"): a server whose journal holds EVENTS events
-- (10,000) about CERTS certificates (1,000), then the page at / opened ROUNDS times in Chromium
-- (tests/helpers/browser.cjs; make test installs it) -- each time a new page of a browser that
-- opened one before -- the time from navigation to the certificates drawn, and the bytes of every response that took (HTML, script, stylesheet,
-- icon, /api/certificates); and the admin listener's side alone: those 5 requests with curl.
-- Prints the medians and the spread. Not part of make bench (it needs
-- the browser); run from the top of the tree:
--   CERTHOOK=$PWD/build/certhook-dev LUA_PATH="$PWD/tests/?.lua;;" lua5.4 tests/bench/console.lua
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local EVENTS = tonumber(os.getenv("EVENTS")) or 10000
local CERTS = tonumber(os.getenv("CERTS")) or 1000
local ROUNDS = tonumber(os.getenv("ROUNDS")) or 15
local CF = { ["cf-webhook-auth"] = "s3cret" }

local srv = Server.start {
  config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n',
  handlers = { ["h.lua"] = 'return { ["*"] = function() end }' },
}
local kinds = { "issuance.succeeded", "deployment.succeeded", "renewal.succeeded", "validation.failed" }
local t0 = socket.gettime()
math.randomseed(23)
for i = 1, EVENTS do
  local body = events.cloudflare(kinds[i % #kinds + 1], { hostname = ("host%04d.example.com"):format(i % CERTS),
    expires_on = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + math.random(-10, 365) * 86400) })
  assert(srv:post("/hooks/cloudflare", body, CF).status == 202)
end
io.stderr:write(("seeded %d events in %.1f s\n"):format(EVENTS, socket.gettime() - t0))
local certs = cjson.decode(require("helpers.http").request(srv.admin, "GET", "/api/certificates?limit=1").body).total

local steps = cjson.encode {
  { ["goto"] = "/" }, { wait_route = true }, -- a browser started: its first page is slower
  { ["goto"] = "/" }, { wait_route = true },
  { eval = "performance.getEntriesByName('console-drawn')[0].startTime", as = "ms" },
  { eval = "JSON.stringify(performance.getEntriesByType('navigation')[0])", as = "nav" },
  { eval = "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))" ..
      ".reduce((n, e) => n + e.transferSize, 0)", as = "bytes" },
  { eval = "performance.getEntriesByType('resource').map(e => e.name.replace(location.origin, '') + ' ' + " ..
      "e.transferSize + ' B ' + Math.round(e.responseEnd - e.startTime) + ' ms').join(', ')", as = "what" },
}
local ms, bytes, what = {}, {}, nil
for _ = 1, ROUNDS do
  local out, err, code = fs.run(("unset LD_PRELOAD; node tests/helpers/browser.cjs http://127.0.0.1:%d '%s'")
    :format(srv.admin, (steps:gsub("'", "'\\''"))))
  assert(code == 0, err)
  local r = cjson.decode(out).results
  ms[#ms + 1], bytes[#bytes + 1], what = r.ms, r.bytes, r.what
  if os.getenv("VERBOSE") then io.stderr:write(r.nav, "\n") end
end
-- the admin listener's side: each file of the first load on a new connection (curl), in turn
local paths = { "/", "/console.js", "/console.css", "/favicon.svg", "/api/certificates" }
local server, sizes = {}, nil
for _ = 1, ROUNDS do
  local total, n = 0, 0
  for _, p in ipairs(paths) do
    local out = io.popen(("curl -s -o /dev/null -w '%%{time_total} %%{size_download}' http://127.0.0.1:%d%s")
      :format(srv.admin, p)):read("a")
    local t, size = out:match("(%S+) (%S+)")
    total, n = total + tonumber(t), n + tonumber(size)
  end
  server[#server + 1], sizes = total * 1000, n
end
table.sort(server)
table.sort(ms)
table.sort(bytes)
print(("journal: %d events, %d certificates; first load of / in Chromium, %d rounds"):format(EVENTS, certs, ROUNDS))
print(("time to the certificates drawn: median %.0f ms (min %.0f, max %.0f)"):format(ms[(#ms + 1) // 2], ms[1], ms[#ms]))
print(("bytes transferred: %d (%s)"):format(bytes[(#bytes + 1) // 2], what))
print(("the admin listener answering the 5 requests (curl, one connection each): median %.1f ms " ..
  "(min %.1f, max %.1f), %d bytes of bodies"):format(server[(#server + 1) // 2], server[1], server[#server], sizes))
srv:cleanup()
