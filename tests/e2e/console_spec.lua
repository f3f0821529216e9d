-- The console on the admin listener (README "Console"): the page and its JSON API -- what it
-- lists and in which order, the filters, an event's detail, replays journaled with who asked --
-- and every refusal: 400, 401, 403, 404, 405. The browser drives the page in
-- console_browser_spec.lua.
local cjson = require "cjson"
local http = require "helpers.http"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'
local BROKEN = [[
  return { ["certificate.deployment.*"] = function(e)
    if io.open("fixed") == nil then error("the ticket system is down") end
  end }]]

local function iso_in(days)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + math.floor(days * 86400))
end

local function api(srv, method, path, headers)
  return http.request(srv.admin, method, path, headers)
end

-- Posts a cloudflare event; returns its id.
local function post(srv, kind, hostname, expires_in_days)
  local body, id = events.cloudflare(kind, { hostname = hostname,
    expires_on = expires_in_days and iso_in(expires_in_days) or nil })
  assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
  return id
end

describe("the console's API", function()
  local srv, ids = nil, {}
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, backoff = 0.05 }\n" ..
        "watchdog = { before = { 30, 7 } }\n",
      handlers = { ["a-ok.lua"] = 'return { ["*"] = function() end }', ["b-broken.lua"] = BROKEN },
    }
    ids.soon = post(srv, "issuance.succeeded", "soon.example.com", 3)
    ids.later = post(srv, "issuance.succeeded", "later.example.com", 20)
    ids.far = post(srv, "issuance.succeeded", "far.example.com", 200)
    ids.gone = post(srv, "issuance.succeeded", "gone.example.com", -2)
    ids.dead1 = post(srv, "deployment.failed", "dead1.example.com")
    ids.dead2 = post(srv, "deployment.failed", "dead2.example.com")
    assert(srv:wait_status(ids.dead1, "b-broken.lua:certificate.deployment.*", "dead"))
    assert(srv:wait_status(ids.dead2, "b-broken.lua:certificate.deployment.*", "dead"))
  end)
  teardown(function() srv:cleanup() end)

  it("serves the page at / with a strict Content-Security-Policy, and never on the webhook listener", function()
    for path, ctype in pairs { ["/"] = "text/html", ["/console.js"] = "text/javascript", ["/console.css"] = "text/css" } do
      local r = api(srv, "GET", path)
      assert.are.equal(200, r.status, path)
      assert.truthy(r.headers["content-type"]:find(ctype, 1, true), path)
      assert.truthy(r.headers["content-security-policy"]:match("^default%-src 'self'"), path)
      assert.are.equal("nosniff", r.headers["x-content-type-options"])
    end
    local page = api(srv, "GET", "/").body
    assert.truthy(page:find('<script src="/console.js"', 1, true))
    assert.is_nil(page:find("https?://"), "the page names no other origin")
    assert.is_nil(api(srv, "GET", "/console.js").body:find("https?://"), "the script names no other origin")
    -- without admin_token the page's first request is preloaded: the browser asks it at once
    assert.are.equal("</api/certificates>; rel=preload; as=fetch; crossorigin", api(srv, "GET", "/").headers.link)
    assert.is_nil(api(srv, "GET", "/console.js").headers.link)
    assert.are.equal(405, api(srv, "POST", "/").status)
    assert.are.equal("GET", api(srv, "POST", "/console.js").headers.allow)
    assert.are.equal(404, srv:request("GET", "/").status)
    assert.are.equal(404, srv:request("GET", "/api/events").status)
    assert.are.equal(404, srv:request("GET", "/console.js").status)
  end)

  it("lists certificates soonest expiry first, with the tiles' counts and filters", function()
    local r = api(srv, "GET", "/api/certificates")
    assert.are.equal(200, r.status, r.body)
    local hosts = {}
    for _, c in ipairs(r.json.certificates) do hosts[#hosts + 1] = c.hostname end
    -- deployment.failed events name certificates without an expiry: last
    assert.are.same({ "gone.example.com", "soon.example.com", "later.example.com", "far.example.com" },
      { hosts[1], hosts[2], hosts[3], hosts[4] })
    assert.are.equal(#r.json.certificates, r.json.total)
    assert.are.same({ 30, 7 }, r.json.thresholds)
    assert.are.same({ 2, 1 }, r.json.within) -- soon, later within 30 days; soon within 7
    assert.are.equal(1, r.json.expired)
    -- warned in the window the certificate is in, not overdue (a threshold must pass after the warning)
    assert.are.equal(0, r.json.overdue)
    assert.are.equal("cloudflare", r.json.certificates[1].provider)
    assert.is_number(r.json.certificates[1].expires_at)

    local expired = api(srv, "GET", "/api/certificates?tile=expired").json
    assert.are.equal(1, #expired.certificates)
    assert.are.equal("gone.example.com", expired.certificates[1].hostname)
    assert.are.equal(r.json.total, expired.total) -- the tiles still count them all
    local week = api(srv, "GET", "/api/certificates?tile=7").json
    assert.are.equal(1, #week.certificates)
    assert.are.equal("soon.example.com", week.certificates[1].hostname)
    local two = api(srv, "GET", "/api/certificates?limit=2&offset=1").json
    assert.are.same({ "soon.example.com", "later.example.com" }, { two.certificates[1].hostname, two.certificates[2].hostname })
    assert.are.equal(0, #api(srv, "GET", "/api/certificates?provider=aws-acm").json.certificates)
    assert.are.equal(r.json.total, #api(srv, "GET", "/api/certificates?provider=cloudflare").json.certificates)
    local status = r.json.certificates[2].status
    for _, c in ipairs(api(srv, "GET", "/api/certificates?status=" .. status).json.certificates) do
      assert.are.equal(status:lower(), c.status:lower())
    end
  end)

  it("lists events newest first with their deliveries, filters them, and pages with a cursor", function()
    local r = api(srv, "GET", "/api/events")
    assert.are.equal(200, r.status, r.body)
    local list = r.json.events
    assert.are.equal(6, #list)
    assert.are.equal(ids.dead2, list[1].id)
    for i = 2, #list do assert.is_true(list[i - 1].seq > list[i].seq) end
    assert.are.equal("cloudflare", list[1].provider)
    assert.are.equal("dead2.example.com", list[1].hostname)
    local broken
    for _, d in ipairs(list[1].deliveries) do
      if d.handler:match("^b%-broken") then broken = d end
    end
    assert.are.equal("dead", broken.status)
    assert.truthy(broken.error:match("the ticket system is down"))
    assert.are.equal(cjson.null, r.json.next_cursor)

    local dead = api(srv, "GET", "/api/events?status=dead").json.events
    assert.are.same({ ids.dead2, ids.dead1 }, { dead[1].id, dead[2].id })
    assert.are.equal(2, #dead)
    local typed = api(srv, "GET", "/api/events?type=certificate.deploy*").json.events
    assert.are.equal(2, #typed)
    assert.are.equal(6, #api(srv, "GET", "/api/events?provider=cloudflare").json.events)
    assert.are.equal(0, #api(srv, "GET", "/api/events?provider=aws-acm").json.events)
    assert.are.equal(0, #api(srv, "GET", "/api/events?since=" .. (os.time() + 3600)).json.events)
    assert.are.equal(6, #api(srv, "GET", "/api/events?since=2020-01-01&until=" .. os.date("!%Y-%m-%d", os.time() + 2 * 86400)).json.events)

    local seen, cursor, pages = {}, nil, 0
    repeat
      local page = api(srv, "GET", "/api/events?limit=4" .. (cursor and "&cursor=" .. cursor or "")).json
      for _, e in ipairs(page.events) do
        assert.is_nil(seen[e.id], "no event on two pages")
        seen[#seen + 1], seen[e.id] = e.id, true
      end
      cursor, pages = page.next_cursor ~= cjson.null and page.next_cursor or nil, pages + 1
    until cursor == nil or pages > 5
    assert.are.equal(2, pages)
    assert.are.equal(6, #seen)
    assert.are.equal(ids.soon, seen[6])
  end)

  it("shows an event: the canonical event, its context, the body and each delivery's error and traceback", function()
    local r = api(srv, "GET", "/api/events/" .. ids.dead1)
    assert.are.equal(200, r.status, r.body)
    local e = r.json
    assert.are.equal(ids.dead1, e.id)
    assert.are.equal("certificate.deployment.failed", e.type)
    assert.are.equal("dead1.example.com", e.event.hostname)
    assert.are.equal(e.type, e.event.type)
    assert.is_nil(e.event.raw) -- the body is apart
    assert.truthy(e.body:find("dead1.example.com", 1, true))
    assert.are.equal(2, #e.deliveries)
    local broken = e.deliveries[2]
    assert.are.equal("b-broken.lua:certificate.deployment.*", broken.handler)
    assert.are.equal("dead", broken.status)
    assert.are.equal(1, broken.attempts)
    assert.truthy(broken.error:match("the ticket system is down"))
    assert.truthy(broken.traceback:match("b%-broken%.lua"), broken.traceback)
    local first = api(srv, "GET", "/api/events/" .. ids.soon).json
    assert.are.equal(false, first.event.stale)
    assert.are.equal(404, api(srv, "GET", "/api/events/cloudflare:no-such-event").status)
  end)

  it("replays one dead delivery, journaled with who asked", function()
    local path = "/api/events/" .. ids.dead1 .. "/replay?handler=" .. "b-broken.lua:certificate.deployment.*"
    fs.write(srv.dir .. "/fixed", "")
    local r = api(srv, "POST", path)
    assert.are.equal(202, r.status, r.body)
    assert.are.equal(1, r.json.deliveries)
    assert.are.equal("local", r.json.by)
    local ok = srv:wait_status(ids.dead1, "b-broken.lua:certificate.deployment.*", "done", 10)
    os.remove(srv.dir .. "/fixed")
    assert(ok, "the replay did not run")
    -- kept once handled: when, who, what
    local rows = srv:sql("SELECT event_id, handler, requested_by FROM replay_log")
    assert.are.same({ ids.dead1, "b-broken.lua:certificate.deployment.*", "local" }, rows[#rows])
    local e = api(srv, "GET", "/api/events/" .. ids.dead1).json
    assert.are.equal(1, #e.replays)
    assert.are.equal("local", e.replays[1].by)
    assert.are.equal("b-broken.lua:certificate.deployment.*", e.replays[1].handler)
    assert.is_true(math.abs(e.replays[1].at - os.time()) < 60)
  end)

  it("replays every dead delivery the filters match, after saying how many with dry_run", function()
    local other = post(srv, "deployment.failed", "dead3.example.com")
    assert(srv:wait_status(other, "b-broken.lua:certificate.deployment.*", "dead"))
    local r = api(srv, "POST", "/api/replay?dry_run=1")
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ dry_run = true, deliveries = 2 }, r.json)
    assert.are.equal(2, api(srv, "POST", "/api/replay?dry_run=1&type=*.deployment.failed").json.deliveries)
    assert.are.equal(0, api(srv, "POST", "/api/replay?dry_run=1&type=nothing.*").json.deliveries)
    assert.are.equal(0, api(srv, "POST", "/api/replay?dry_run=1&since=" .. (os.time() + 3600)).json.deliveries)
    assert.are.equal(2, api(srv, "POST", "/api/replay?dry_run=1&provider=cloudflare&handler=b-broken.lua:certificate.deployment.*").json.deliveries)
    assert.are.equal(0, api(srv, "POST", "/api/replay?dry_run=true&handler=a-ok.lua:*").json.deliveries)
    fs.write(srv.dir .. "/fixed", "")
    r = api(srv, "POST", "/api/replay")
    assert.are.equal(202, r.status, r.body)
    assert.are.equal(2, r.json.deliveries)
    local ok = srv:wait_status(ids.dead2, "b-broken.lua:certificate.deployment.*", "done", 10) and
      srv:wait_status(other, "b-broken.lua:certificate.deployment.*", "done", 10)
    os.remove(srv.dir .. "/fixed")
    assert(ok, "the replays did not run")
    assert.are.same({ dry_run = true, deliveries = 0 }, api(srv, "POST", "/api/replay?dry_run=1").json)
  end)

  it("answers 400 to a bad argument, 404 to what is not there, 405 to the wrong method", function()
    for _, path in ipairs { "/api/events?status=broken", "/api/events?limit=0", "/api/events?limit=x",
                            "/api/events?limit=501", "/api/events?cursor=-3", "/api/events?since=yesterday",
                            "/api/certificates?limit=0", "/api/certificates?tile=soon", "/api/certificates?offset=-1" } do
      local r = api(srv, "GET", path)
      assert.are.equal(400, r.status, path)
      assert.are.equal("bad_request", r.json.error, path)
    end
    for _, path in ipairs { "/api/replay?dry_run=maybe", "/api/replay?status=done" } do
      assert.are.equal(400, api(srv, "POST", path).status, path)
    end
    assert.are.equal(404, api(srv, "GET", "/api/nothing").status)
    assert.are.equal(404, api(srv, "GET", "/api").status)
    assert.are.equal(404, api(srv, "POST", "/api/events/cloudflare:no-such-event/replay").status)
    assert.are.equal(404, api(srv, "POST", "/api/events/" .. ids.soon .. "/replay?handler=no-such.lua:*").status)
    for method_path, allow in pairs { ["POST /api/certificates"] = "GET", ["POST /api/events"] = "GET",
                                      ["GET /api/replay"] = "POST", ["DELETE /api/events"] = "GET",
                                      ["PUT /api/events/x/replay"] = "POST", ["POST /api/events/x"] = "GET" } do
      local method, path = method_path:match("(%S+) (%S+)")
      local r = api(srv, method, path)
      assert.are.equal(405, r.status, method_path)
      assert.are.equal(allow, r.headers.allow, method_path)
    end
    -- a web page of another origin cannot make the browser replay
    local r = api(srv, "POST", "/api/replay", { Origin = "http://evil.example" })
    assert.are.equal(403, r.status)
    r = api(srv, "POST", "/api/replay", { ["Sec-Fetch-Site"] = "cross-site" })
    assert.are.equal(403, r.status)
  end)

  it("answers only loopback Host names without admin_token", function()
    local r = api(srv, "GET", "/api/events")
    assert.are.equal(200, r.status)
    local sock = require("socket").tcp()
    assert(sock:connect("127.0.0.1", srv.admin))
    sock:send("GET /api/events HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    local line = sock:receive("*l")
    sock:close()
    assert.truthy(line:match(" 403 "), line)
  end)
end)

describe("the console's API on a certificate whose status changed", function()
  local srv
  setup(function() srv = Server.start { config = SOURCES .. "watchdog = false\n" } end)
  teardown(function() srv:cleanup() end)

  it("lists its previous status and state: the ones before the last change, kept while the status stays", function()
    -- the entry once the event id is folded into it (the fold follows the 202)
    local function wait_for(kind)
      local id = post(srv, kind, "moved.example.com", 40)
      return assert(fs.wait_for(function()
        local r = api(srv, "GET", "/api/certificates")
        assert.are.equal(200, r.status, r.body)
        assert.is_true(#r.json.certificates <= 1)
        local c = r.json.certificates[1]
        return c and c.last_event == id and c
      end, 10), "not folded: " .. id)
    end
    local first = wait_for("validation.failed")
    assert.are.equal("pending_validation", first.status)
    assert.are.equal(cjson.null, first.previous_status) -- none before
    assert.are.equal(cjson.null, first.previous_state)
    local moved = wait_for("validation.succeeded")
    assert.are.equal("pending_issuance", moved.status)
    assert.are.equal("pending_validation", moved.previous_status)
    assert.are.equal("pending_validation", moved.previous_state)
    local same = wait_for("validation.succeeded")
    assert.are.equal("pending_issuance", same.status)
    assert.are.equal("pending_validation", same.previous_status)
    assert.are.equal("pending_validation", same.previous_state)
  end)
end)

describe("the console's tokens", function()
  local ADMIN, READ = "console-admin-token-0123456789", "console-read-token-0123456789"
  local srv, dead
  setup(function()
    srv = Server.start {
      config = SOURCES .. ("admin_token = %q\nadmin_read_token = %q\n"):format(ADMIN, READ) ..
        "delivery = { max_attempts = 1, backoff = 0.05 }\n",
      handlers = { ["b-broken.lua"] = BROKEN },
    }
    dead = post(srv, "deployment.failed", "tok.example.com")
    assert(srv:wait_status(dead, "b-broken.lua:certificate.deployment.*", "dead"))
  end)
  teardown(function() srv:cleanup() end)

  local function bearer(t) return { Authorization = "Bearer " .. t } end

  it("serves the page without a token (it asks for one) and requires one for every /api/ request", function()
    assert.are.equal(200, api(srv, "GET", "/").status)
    assert.is_nil(api(srv, "GET", "/").headers.link, "no preload: it would be refused (401)")
    assert.are.equal(200, api(srv, "GET", "/console.js").status)
    for _, mp in ipairs { "GET /api/events", "GET /api/certificates", "GET /api/events/" .. dead,
                          "POST /api/replay", "POST /api/events/" .. dead .. "/replay", "GET /api/nothing" } do
      local method, path = mp:match("(%S+) (%S+)")
      local r = api(srv, method, path)
      assert.are.equal(401, r.status, mp)
      assert.truthy(r.headers["www-authenticate"]:match("^Bearer"), mp)
      assert.are.equal(401, api(srv, method, path, bearer("not-the-token-0123456789")).status, mp)
    end
  end)

  it("lets the read-only token look but not replay, nor reload", function()
    assert.are.equal(200, api(srv, "GET", "/api/events", bearer(READ)).status)
    assert.are.equal(200, api(srv, "GET", "/api/certificates", bearer(READ)).status)
    assert.are.equal(200, api(srv, "GET", "/api/events/" .. dead, bearer(READ)).status)
    assert.are.equal(200, api(srv, "GET", "/metrics", bearer(READ)).status)
    for _, path in ipairs { "/api/replay", "/api/replay?dry_run=1", "/api/events/" .. dead .. "/replay", "/reload" } do
      local r = api(srv, "POST", path, bearer(READ))
      assert.are.equal(403, r.status, path)
      assert.truthy(r.json.message:match("admin_read_token may only look"), r.body)
    end
    assert.are.equal(0, #srv:sql("SELECT id FROM replay_log"))
  end)

  it("replays with the admin token, journaled as the admin token's", function()
    local r = api(srv, "POST", "/api/events/" .. dead .. "/replay", bearer(ADMIN))
    assert.are.equal(202, r.status, r.body)
    assert.are.equal("admin", r.json.by)
    assert.are.same({ { "admin" } }, srv:sql("SELECT requested_by FROM replay_log"))
    assert.are.equal("admin", api(srv, "GET", "/api/events/" .. dead, bearer(READ)).json.replays[1].by)
    assert.are.equal(200, api(srv, "POST", "/reload", bearer(ADMIN)).status)
  end)
end)

describe("admin_read_token", function()
  local function refused(config)
    local dir = fs.tmpdir()
    fs.write(dir .. "/c.lua", 'admin = "127.0.0.1:0"\nlisten = "127.0.0.1:0"\n' .. config)
    local out, err, code = fs.run(("cd '%s' && chmod 600 c.lua && %s serve --config c.lua"):format(dir, Server.certhook))
    fs.rm(dir)
    return code ~= 0 and (out .. err) or nil
  end

  it("needs admin_token, at least 16 characters, and another value", function()
    assert.truthy((refused('admin_read_token = "read-only-token-0123456789"\n') or ""):match("admin_read_token needs admin_token"))
    assert.truthy((refused('admin_token = "admin-token-0123456789"\nadmin_read_token = "short"\n') or ""):match("at least 16"))
    assert.truthy((refused('admin_token = "same-token-0123456789"\nadmin_read_token = "same-token-0123456789"\n') or "")
      :match("must differ"))
  end)
end)
