-- The console in a real browser: Debian's chromium, driven by npm's playwright-core (`make test`
-- installs both; tests/helpers/browser.cjs) against a seeded `certhook serve`. Every page load
-- asks nothing of another origin and logs no error (a CSP violation would be one). The
-- screenshot in README "Console" is the one the first test takes (build/console.png).
local cjson = require "cjson"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n' ..
  "delivery = { max_attempts = 1, backoff = 0.05 }\nwatchdog = { before = { 30, 7 } }\n"
local HANDLERS = {
  ["a-notify.lua"] = 'return { ["*"] = function() end }',
  ["b-ticket.lua"] = [[
    return { ["certificate.deployment.*"] = function(e)
      if io.open("fixed") == nil then error("the ticket system is down") end
    end }]],
}
local SCREENSHOT = os.getenv("CONSOLE_SCREENSHOT") or "build/console.png"

local function post(srv, kind, hostname, days)
  local body, id = events.cloudflare(kind, { hostname = hostname,
    expires_on = days and os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + math.floor(days * 86400)) or nil })
  assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
  return id
end

local function seed(srv)
  local ids = {}
  ids.before = post(srv, "validation.succeeded", "shop.example.com", 2) -- then issued: a previous status
  for i, t in ipairs { { "shop.example.com", 2 }, { "api.example.com", 12 }, { "www.example.com", 26 },
                       { "docs.example.com", 75 }, { "blog.example.com", 160 }, { "old.example.com", -3 } } do
    ids[i] = post(srv, "issuance.succeeded", t[1], t[2])
  end
  ids.dead1 = post(srv, "deployment.failed", "cdn.example.com")
  ids.dead2 = post(srv, "deployment.failed", "edge.example.com")
  assert(srv:wait_status(ids.dead1, "b-ticket.lua:certificate.deployment.*", "dead"))
  assert(srv:wait_status(ids.dead2, "b-ticket.lua:certificate.deployment.*", "dead"))
  return ids
end

-- Runs steps (helpers/browser.cjs) in one page of the admin listener; returns the results,
-- having checked that every request went to that origin and nothing was logged as an error.
local function browse(srv, steps, expected)
  local origin = "http://127.0.0.1:" .. srv.admin
  local out, err, code = fs.run(("unset LD_PRELOAD; node tests/helpers/browser.cjs %s '%s'")
    :format(origin, cjson.encode(steps):gsub("'", "'\\''")))
  assert(code == 0, "the browser failed: " .. err .. out)
  local r = cjson.decode(out)
  assert.is_true(#r.requests > 0)
  for _, req in ipairs(r.requests) do
    assert.truthy(req:match("^%u+ (.*)$"):sub(1, #origin + 1) == origin .. "/", "a request to another origin: " .. req)
  end
  local errors = {}
  for _, e in ipairs(r.errors) do -- what the test expects: a refusal the browser logs
    if not (expected and e:match(expected)) then errors[#errors + 1] = e end
  end
  assert.are.same({}, errors, "errors in the page:\n" .. table.concat(errors, "\n"))
  return r.results, r.requests
end

describe("the console in Chromium", function()
  local srv, ids
  setup(function()
    srv = Server.start { config = SOURCES, handlers = HANDLERS }
    ids = seed(srv)
  end)
  teardown(function() srv:cleanup() end)

  it("lists certificates soonest expiry first, and each tile and filter narrows the table", function()
    local r = browse(srv, {
      { ["goto"] = "/" }, { wait = "#certificates tbody tr" },
      { texts = "#certificates tbody tr td:first-child", as = "hosts" },
      { texts = "#certificates thead th", as = "heads" },
      { texts = "#certificates tbody tr td:nth-child(5)", as = "previous" },
      { texts = "#certificates tbody tr td:nth-child(7)", as = "days" },
      { texts = ".tiles button", as = "tiles" },
      { attrs = { ".bar", "class" }, as = "bars" },
      { screenshot = SCREENSHOT },
      { click = 'button[data-tile="expired"]' }, { wait_url = "tile=expired" },
      { wait_count = { "#certificates tbody tr", 1 } },
      { texts = "#certificates tbody tr td:first-child", as = "expired" },
      { click = 'button[data-tile="7"]' }, { wait_url = "tile=7" },
      { wait_text = { "#certificates caption", "tile: 7" } },
      { texts = "#certificates tbody tr td:first-child", as = "week" },
      { attrs = { 'button[data-tile="7"]', "aria-pressed" }, as = "pressed" },
      { select = { "select[name=provider]", "cloudflare" } }, { wait_url = "provider=cloudflare" },
      { wait_text = { "#certificates caption", "tile: 7" } },
      { url = true, as = "url" },
    })
    local want = { "old.example.com", "shop.example.com", "api.example.com", "www.example.com",
                   "docs.example.com", "blog.example.com" }
    for i, host in ipairs(want) do
      assert.truthy(r.hosts[i]:find(host, 1, true) == 1, ("row %d: %s, not %s"):format(i, r.hosts[i], host))
    end
    assert.are.equal("Previous status", r.heads[5])
    assert.are.equal("pending_issuance", r.previous[2]) -- shop: validated, then issued
    assert.are.equal("expired", r.days[1])
    assert.truthy(r.days[2]:match("^%d days?$"), r.days[2])
    assert.are.same({ "bar expired", "bar crit", "bar warn", "bar warn", "bar ok", "bar ok" },
      { table.unpack(r.bars, 1, 6) })
    assert.truthy(table.concat(r.tiles, "|"):match("Expiring within 30 days"))
    assert.truthy(r.expired[1]:find("old.example.com", 1, true))
    assert.are.equal(1, #r.week)
    assert.truthy(r.week[1]:find("shop.example.com", 1, true))
    assert.are.same({ "true" }, r.pressed)
    assert.truthy(r.url:match("#certificates%?") and r.url:match("tile=7") and r.url:match("provider=cloudflare"), r.url)
    assert.truthy(fs.read(SCREENSHOT), "no screenshot")
  end)

  it("lists events newest first, keeps the filters in the URL, pages with a cursor and opens an event", function()
    local r = browse(srv, {
      { ["goto"] = "/#events?provider=cloudflare" }, { wait_route = true },
      { attrs = { "#events tbody tr", "data-id" }, as = "all" },
      { ["goto"] = "/#events" }, { wait_route = true },
      { fill = { "input[name=type]", "certificate.deployment.*" } },
      { click = "form.filters button[type=submit]" }, { wait_url = "type=certificate.deployment" },
      { wait_route = true },
      { attrs = { "#events tbody tr", "data-id" }, as = "typed" },
      { url = true, as = "url" },
      { ["goto"] = "/#events?provider=cloudflare&limit=3" }, { wait_route = true },
      { attrs = { "#events tbody tr", "data-id" }, as = "page1" },
      { click = 'button:has-text("Older")' }, { wait_url = "cursor=" }, { wait_route = true },
      { attrs = { "#events tbody tr", "data-id" }, as = "page2" },
      { ["goto"] = "/#events?provider=cloudflare" }, { wait_route = true },
      { click = "#events tbody tr:first-child td a" }, { wait = "#canonical" },
      { texts = "#view h2", as = "title" }, { texts = "#canonical", as = "canonical" },
      { texts = "#body", as = "body" }, { texts = "#deliveries tbody tr", as = "deliveries" },
      { texts = "#deliveries details pre", as = "tracebacks" },
    })
    assert.are.equal(9, #r.all)
    assert.are.equal(ids.before, r.all[9])
    assert.are.same({ ids.dead2, ids.dead1 }, { r.all[1], r.all[2] })
    assert.are.equal(ids[1], r.all[8])
    assert.are.same({ ids.dead2, ids.dead1 }, r.typed)
    assert.truthy(r.url:match("#events%?type=certificate.deployment"), r.url)
    assert.are.same({ r.all[1], r.all[2], r.all[3] }, r.page1)
    assert.are.same({ r.all[4], r.all[5], r.all[6] }, r.page2)
    assert.truthy(r.title[1]:match("certificate%.deployment%.failed"), r.title[1])
    local canonical = cjson.decode(r.canonical[1])
    assert.are.equal("edge.example.com", canonical.hostname)
    assert.truthy(r.body[1]:match('\n  "'), "the body is pretty-printed")
    assert.truthy(r.deliveries[2]:match("the ticket system is down"), r.deliveries[2])
    assert.truthy(r.tracebacks[1]:match("b%-ticket%.lua"), r.tracebacks[1])
  end)

  it("shows dead letters by handler and error; Replay runs one, Replay all says how many first", function()
    local before = #srv:sql("SELECT id FROM replay_log")
    local r = browse(srv, {
      { ["goto"] = "/#dead" }, { wait = "table.dead tbody tr" },
      { texts = "#view section h3", as = "groups" },
      { texts = "#view section p.error", as = "errors" },
      { texts = "table.dead tbody tr button", as = "buttons" },
      { click = "table.dead tbody tr:first-child button" },
      { wait_text = { "#replay-result", "Replay requested" } },
      { texts = "#replay-result", as = "one" },
      { click = "#replay-all" }, { wait = "#replay-count" },
      { texts = "#replay-count", as = "count" },
      { click = "#replay-confirm" }, { wait_text = { "#replay-result", "deliveries will run again" } },
      { texts = "#replay-result", as = "all" },
    })
    assert.are.equal(1, #r.groups)
    assert.truthy(r.groups[1]:match("^b%-ticket%.lua:certificate%.deployment%.%* — 2 dead"), r.groups[1])
    assert.truthy(r.errors[1]:match("the ticket system is down"))
    assert.are.same({ "Replay", "Replay" }, r.buttons)
    assert.are.equal("Replay requested: 1 delivery will run again.", r.one[1])
    local n = tonumber(r.count[1]:match("^Replay all will run (%d+) dead deliver"))
    assert(n == 1 or n == 2, r.count[1])
    assert.are.equal(("Replay requested: %d deliveries will run again."):format(n), r.all[1])
    local log = srv:sql("SELECT event_id, requested_by FROM replay_log ORDER BY id")
    assert.are.equal(before + 1 + n, #log)
    assert.are.same({ ids.dead2, "local" }, log[before + 1])
  end)

  it("keeps working at a phone's width", function()
    local r = browse(srv, {
      { viewport = { 390, 844 } }, { ["goto"] = "/" }, { wait = "#certificates tbody tr" },
      { eval = "document.documentElement.scrollWidth", as = "width" },
      { eval = "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391).map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 8).join(' ')", as = "wide" },
      { visible = "nav a#nav-dead", as = "nav" },
      { click = "#nav-events" }, { wait = "#events tbody tr" },
      { eval = "document.documentElement.scrollWidth", as = "events_width" },
    })
    assert.is_true(r.width <= 390, tostring(r.width) .. ": " .. r.wide)
    assert.is_true(r.events_width <= 390, tostring(r.events_width))
    assert.is_true(r.nav)
  end)
end)

describe("the console's first load in Chromium", function()
  local srv
  setup(function()
    srv = Server.start { config = SOURCES, handlers = { ["a-notify.lua"] = 'return { ["*"] = function() end }' } }
    for i = 1, 44 do post(srv, "issuance.succeeded", ("host%02d.example.com"):format(i), i) end
    local body = events.cloudflare("issuance.succeeded", { hostname = '<img src=x id=evil>&.example.com',
      expires_on = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 300 * 86400) })
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
  end)
  teardown(function() srv:cleanup() end)

  it("asks /api/certificates once, preloaded, and draws every row, its values as text", function()
    local r, requests = browse(srv, {
      { ["goto"] = "/" }, { wait_route = true },
      { eval = "document.querySelectorAll('#certificates tbody tr').length", as = "rows" },
      { eval = "document.querySelectorAll('#certificates tbody tr .bar span[data-pct]:not([style])').length", as = "unsized" },
      { texts = "#certificates tbody tr:last-child td:first-child", as = "last" },
      { eval = "document.querySelectorAll('#evil, #certificates img').length", as = "evil" },
      { ["goto"] = "/?again#events" }, { wait_route = true }, -- a new load, of another view
      { sleep = 3500 }, -- Chromium warns of a preload left unused 3 s after the load
    })
    assert.are.equal(45, r.rows)
    assert.are.equal(0, r.unsized)
    assert.truthy(r.last[1]:find('<img src=x id=evil>&.example.com', 1, true), r.last[1]) -- shown as text
    assert.are.equal(0, r.evil)
    local api = {}
    for _, req in ipairs(requests) do
      local path = req:match("^GET http://[^/]+(/api/[^?]*)")
      if path then api[#api + 1] = path end
    end
    -- each load: /api/certificates once (the preload the script takes); #events then its own
    assert.are.same({ "/api/certificates", "/api/certificates", "/api/events" }, api)
  end)
end)

describe("the console's token prompt in Chromium", function()
  local ADMIN, READ = "browser-admin-token-0123456789", "browser-read-token-0123456789"
  local srv, ids
  setup(function()
    srv = Server.start { config = SOURCES .. ("admin_token = %q\nadmin_read_token = %q\n"):format(ADMIN, READ),
                         handlers = HANDLERS }
    ids = seed(srv)
  end)
  teardown(function() srv:cleanup() end)

  it("asks for the token; the read-only one looks but cannot replay; the admin one replays", function()
    local r, requests = browse(srv, {
      { ["goto"] = "/#dead" }, { wait = "#login" },
      { visible = "table", as = "table_before" },
      { fill = { "#token", "not-the-token-0123456789" } }, { click = "#login button[type=submit]" },
      { wait_text = { "#login-error", "needs Authorization" } },
      { fill = { "#token", READ } }, { click = "#login button[type=submit]" },
      { wait = "table.dead tbody tr" },
      { click = "table.dead tbody tr:first-child button" },
      { wait_text = { "#replay-result", "Replay refused" } },
      { texts = "#replay-result", as = "refused" },
      { click = "#signout" }, { wait = "#login" },
      { fill = { "#token", ADMIN } }, { click = "#login button[type=submit]" },
      { wait = "table.dead tbody tr" },
      { click = "table.dead tbody tr:first-child button" },
      { wait_text = { "#replay-result", "Replay requested" } },
    }, "status of 40[13]")
    assert.is_false(r.table_before)
    assert.truthy(r.refused[1]:match("admin_read_token may only look"), r.refused[1])
    assert.are.same({ { ids.dead2, "admin" } }, srv:sql("SELECT event_id, requested_by FROM replay_log"))
    local api = 0
    for _, req in ipairs(requests) do api = api + (req:match(" http://[^/]+/api/") and 1 or 0) end
    assert.is_true(api >= 4)
  end)
end)
