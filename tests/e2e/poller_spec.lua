-- Pollers (DESIGN §6, issue 24): the Cloudflare custom hostnames API, asked on an interval by
-- a poller against a local API double (tests/helpers/cf_api_server.lua, the official example
-- body), diffed against the inventory. The first run adds what the inventory never heard of
-- quietly (no handler runs); a change no webhook told becomes the event its webhook would have
-- been, once, reconciled = true, through restarts; a change a webhook told is not repeated;
-- pages are followed; a 429 is honoured (Retry-After), shown in /metrics and /readyz, and
-- intake answers meanwhile; a bad poller configuration is refused at the start.
local cjson = require "cjson"
local socket = require "socket"
local Api = require "helpers.cf_api"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"

local ZONE, TOKEN = "023e105f4ecef8ad9ca31a8372d0c353", "cf-api-token-0123456789"
local CF = { ["cf-webhook-auth"] = "s3cret" }

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
local EXPIRES = iso(os.time() + 80 * 86400)

-- Seven custom hostnames: two pages of five.
local function hostnames()
  local list = {}
  for i, name in ipairs { "a", "b", "c", "d", "e", "f", "g" } do
    local host = name .. ".poll.example"
    list[i] = { hostname = host, id = ("ch-%02d"):format(i), ssl_id = "cert-" .. host,
      status = i <= 3 and "pending_validation" or "active", expires_on = i > 3 and EXPIRES or nil }
  end
  return list
end

local function config(api, extra)
  return 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n' ..
    ('pollers = { cf = { provider = "cloudflare", zone = %q, token = os.getenv("CF_API_TOKEN"), ' ..
     'interval = 1, per_page = 5, api = %q%s } }\n'):format(ZONE, api.url, extra or "")
end

-- Every event delivered to a handler, whatever its type ("*"), a line each.
local HANDLER = [[
local json = require("certhook").json
return { ["*"] = function(e)
  local f = assert(io.open("calls.jsonl", "a"))
  f:write(json.encode { id = e.id, type = e.type, source = e.source, provider = e.provider,
    reconciled = e.reconciled, hostname = e.hostname, status = e.certificate and e.certificate.status,
    stale = e.stale }, "\n")
  f:close()
end }
]]

local function calls(srv, host)
  local out = {}
  for l in (fs.read(srv.dir .. "/calls.jsonl") or ""):gmatch("[^\n]+") do
    local r = cjson.decode(l)
    if host == nil or r.hostname == host then out[#out + 1] = r end
  end
  return out
end

local function readyz(srv) return http.get(srv.admin, "/readyz").json end

-- Waits for n more complete runs of the poller cf (its runs counter in /readyz).
local function runs(srv, n)
  local first = readyz(srv).pollers.cf.runs
  assert(fs.wait_for(function() return readyz(srv).pollers.cf.runs >= first + n end, 15),
    "the poller did not run: " .. cjson.encode(readyz(srv)))
end

local function entry(srv, key)
  return srv:sql(("SELECT status, source, CASE WHEN expires_at IS NULL THEN 'no' ELSE 'yes' END FROM inventory WHERE key = '%s'"):format(key))[1]
end

describe("the Cloudflare poller", function()
  local api, srv
  setup(function()
    api = Api.start { zone = ZONE, token = TOKEN, hostnames = hostnames() }
    srv = Server.start { config = config(api), handlers = { ["all.lua"] = HANDLER },
      env = { CF_API_TOKEN = TOKEN } }
  end)
  teardown(function()
    srv:cleanup()
    api:stop()
  end)

  it("adds what the inventory never heard of quietly at its first run, reading every page", function()
    assert(fs.wait_for(function()
      return tonumber(srv:sql("SELECT count(*) FROM inventory WHERE source = 'poll:cf'")[1][1]) == 7
    end, 10), "the inventory did not learn the 7 certificates")
    runs(srv, 2)
    assert.are.same({}, calls(srv))
    local row = entry(srv, "cloudflare:cert-a.poll.example")
    assert.are.same({ "pending_validation", "poll:cf", "no" }, row)
    assert.are.same({ "active", "poll:cf", "yes" }, entry(srv, "cloudflare:cert-g.poll.example"))
    local quiet = srv:sql("SELECT count(*) FROM events WHERE type = 'certificate.observed' AND source = 'poll:cf'")[1][1]
    assert.are.equal("7", quiet)
    -- two pages, the token as a bearer token, per_page as configured
    local pages = {}
    for _, r in ipairs(api:requests()) do
      assert.are.equal("Bearer " .. TOKEN, r.authorization)
      assert.are.equal(("/client/v4/zones/%s/custom_hostnames"):format(ZONE), r.path)
      assert.are.equal("5", r.query.per_page)
      pages[r.query.page] = true
    end
    assert.are.same({ ["1"] = true, ["2"] = true }, pages)
    -- no faster than the default rate, 2 requests a second
    local reqs = api:requests()
    for i = 2, #reqs do
      if reqs[i].query.page == "2" then
        assert.truthy(reqs[i].at - reqs[i - 1].at >= 0.45, ("page 2 %.3f s after page 1"):format(reqs[i].at - reqs[i - 1].at))
      end
    end
    assert.are.equal("ok", readyz(srv).pollers.cf.result)
  end)

  it("journals a change no webhook told as its webhook's event, once, through a restart", function()
    api:status("a.poll.example", "active", iso(os.time() + 90 * 86400))
    local got = assert(fs.wait_for(function() return calls(srv, "a.poll.example")[1] end, 10),
      "no event for the change")
    assert.are.equal("certificate.deployment.succeeded", got.type)
    assert.are.equal("poll:cf", got.source)
    assert.are.equal("cloudflare", got.provider)
    assert.is_true(got.reconciled)
    assert.are.equal("active", got.status)
    assert.truthy(got.id:match("^poll:cf:cloudflare:cert%-a%.poll%.example:active:%d+$"), got.id)
    runs(srv, 2)
    assert.are.equal(1, #calls(srv, "a.poll.example"))
    assert.are.equal(1, #calls(srv))
    assert.are.equal("active", entry(srv, "cloudflare:cert-a.poll.example")[1])
    srv:stop()
    srv:launch()
    runs(srv, 2)
    assert.are.equal(1, #calls(srv, "a.poll.example"))
    -- the late webhook of that change is stale: it occurred before the poller saw it
    local body = events.cloudflare("deployment.succeeded", { hostname = "a.poll.example",
      cert_id = "cert-a.poll.example", created_at = iso(os.time() - 3600) })
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    local late = assert(fs.wait_for(function() return calls(srv, "a.poll.example")[2] end, 10))
    assert.are.equal("cloudflare", late.source)
    assert.is_true(late.stale)
  end)

  it("does not repeat a change a webhook told", function()
    local body = events.cloudflare("validation.succeeded", { hostname = "b.poll.example",
      cert_id = "cert-b.poll.example", created_at = iso(os.time()) })
    -- b is active on the API; the webhook says pending_issuance; then the API says so too
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function() return calls(srv, "b.poll.example")[1] end, 10), "the webhook was not delivered")
    api:status("b.poll.example", "pending_issuance")
    runs(srv, 3)
    local got = calls(srv, "b.poll.example")
    assert.are.equal(1, #got, cjson.encode(got))
    assert.are.equal("cloudflare", got[1].source)
    assert.are.equal("pending_issuance", entry(srv, "cloudflare:cert-b.poll.example")[1])
  end)

  it("honours a 429's Retry-After, shows it in /metrics and /readyz, and intake answers meanwhile", function()
    local before = #api:requests()
    api:fail { { status = 429, retry_after = "3" } }
    assert(fs.wait_for(function() return readyz(srv).pollers.cf.result == "rate_limited" end, 10),
      cjson.encode(readyz(srv)))
    local r = readyz(srv)
    assert.are.equal("ready", r.status)
    assert.truthy(r.pollers.cf.error:match("^HTTP 429"), r.pollers.cf.error)
    local text = http.get(srv.admin, "/metrics").body
    assert.truthy(text:match('certhook_poller_runs_total{poller="cf",result="rate_limited"} 1'), text)
    assert.truthy(text:match('certhook_poller_last_success_timestamp_seconds{poller="cf"} %d'), text)
    local body = events.cloudflare("validation.failed", { hostname = "c.poll.example", cert_id = "cert-c.poll.example" })
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function() return readyz(srv).pollers.cf.result == "ok" end, 10))
    local reqs = api:requests()
    local limited = reqs[before + 1]
    local after = reqs[before + 2]
    assert.truthy(after.at - limited.at >= 2.9, ("asked again %.2f s after the 429"):format(after.at - limited.at))
    local logged = 0
    for _, l in ipairs(srv:logs()) do
      if l.poller == "cf" and l.result == "rate_limited" then logged = logged + 1 end
    end
    assert.are.equal(1, logged)
  end)

  it("tells a new expiry as a renewal, a timed-out validation as its failure", function()
    api:status("d.poll.example", "active", iso(os.time() + 170 * 86400))
    api:status("e.poll.example", "validation_timed_out")
    local renewed = assert(fs.wait_for(function() return calls(srv, "d.poll.example")[1] end, 10), "no renewal")
    assert.are.equal("certificate.renewal.succeeded", renewed.type)
    assert.is_true(renewed.reconciled)
    local failed = assert(fs.wait_for(function() return calls(srv, "e.poll.example")[1] end, 10), "no failure")
    assert.are.equal("certificate.validation.failed", failed.type)
    assert.are.equal("validation_timed_out", failed.status)
  end)

  it("takes pollers away and back with a reload", function()
    local conf = srv.dir .. "/certhook.conf.lua"
    local full = fs.read(conf)
    fs.write(conf, (full:gsub("pollers = [^\n]*\n", "")))
    srv:signal("HUP")
    assert(fs.wait_for(function() return next(readyz(srv).pollers) == nil end, 10), cjson.encode(readyz(srv)))
    local n = #api:requests()
    os.execute("sleep 2")
    assert.are.equal(n, #api:requests())
    fs.write(conf, (full:gsub("interval = 1,", "interval = 1.5,")))
    srv:signal("HUP")
    assert(fs.wait_for(function() return readyz(srv).pollers.cf end, 10), "the poller did not come back")
    runs(srv, 1)
    assert.truthy(#api:requests() > n)
  end)

  it("journals a certificate gone from the API as deleted", function()
    local list = hostnames()
    local state = cjson.decode(fs.read(api.dir .. "/state.json"))
    for i, h in ipairs(state.hostnames) do
      if h.hostname == "g.poll.example" then table.remove(state.hostnames, i) end
    end
    api:set(state)
    local got = assert(fs.wait_for(function() return calls(srv, "g.poll.example")[1] end, 10), "no deletion")
    assert.are.equal("certificate.deletion.succeeded", got.type)
    assert.is_true(got.reconciled)
    assert.are.equal("deleted", entry(srv, "cloudflare:cert-g.poll.example")[1])
    runs(srv, 2)
    assert.are.equal(1, #calls(srv, "g.poll.example"))
    assert.truthy(#list == 7)
  end)
end)

describe("a poller's first_run = events", function()
  it("journals what the inventory never heard of as events", function()
    local api = Api.start { zone = ZONE, token = TOKEN, hostnames = { hostnames()[4] } }
    local srv = Server.start { config = config(api, ', first_run = "events"'), handlers = { ["all.lua"] = HANDLER },
      env = { CF_API_TOKEN = TOKEN } }
    local got = assert(fs.wait_for(function() return calls(srv)[1] end, 10), "no event")
    assert.are.equal("certificate.deployment.succeeded", got.type)
    assert.are.equal("d.poll.example", got.hostname)
    srv:cleanup()
    api:stop()
  end)
end)

describe("a poller's configuration", function()
  local function refused(cfg)
    local dir = fs.tmpdir()
    fs.write(dir .. "/c.conf.lua", cfg)
    local out, err, code = fs.run(("CF_API_TOKEN=%s %s serve --config %s/c.conf.lua --data %s/data --handlers %s " ..
      "--listen 127.0.0.1:0 --admin 127.0.0.1:0"):format(TOKEN, Server.certhook, dir, dir, dir))
    fs.rm(dir)
    assert.are.equal(1, code, out)
    return err
  end
  local api = { url = "http://127.0.0.1:9/client/v4" }

  it("refuses an unknown setting, a missing zone or token, a provider that cannot be polled", function()
    local err = refused(config(api, ", intervall = 5"))
    assert.truthy(err:match("pollers%.cf%.intervall is not a setting"), err)
    err = refused(config(api):gsub("zone = %b\"\", ", ""))
    assert.truthy(err:match("pollers%.cf%.zone must be"), err)
    err = refused(config(api):gsub('token = os%.getenv%("CF_API_TOKEN"%), ', ""))
    assert.truthy(err:match("pollers%.cf%.token must be"), err)
    err = refused(config(api):gsub('provider = "cloudflare", zone', 'provider = "ibm-cm", zone'))
    assert.truthy(err:match("pollers%.cf%.provider must be one of cloudflare"), err)
    err = refused(config(api, ", max_pages = 0"))
    assert.truthy(err:match("pollers%.cf%.max_pages must be a number from 1"), err)
    err = refused(config(api, ', first_run = "loud"'))
    assert.truthy(err:match("first_run must be"), err)
    err = refused(config(api, ', api = "ftp://x"'))
    assert.truthy(err:match("api must be an http"), err)
  end)
end)

-- Two servers on one PostgreSQL journal, each with the same poller: one polls at a time (the
-- other finds the run claimed: "elsewhere"), a change no webhook told is journaled once (its id
-- is the same at both), and its handler runs once.
if os.getenv("CERTHOOK_TEST_JOURNAL") == "postgresql" then
  describe("pollers of two servers on one journal", function()
    it("poll one at a time and raise each change once", function()
      local api = Api.start { zone = ZONE, token = TOKEN, hostnames = hostnames() }
      local dir = fs.tmpdir()
      local handler = HANDLER:gsub('io%.open%("calls%.jsonl", "a"%)', 'io.open(os.getenv("OUT"), "a")')
      local a = Server.start { config = config(api), handlers = { ["all.lua"] = handler },
        env = { CF_API_TOKEN = TOKEN, OUT = dir .. "/calls.jsonl" } }
      local b = Server.start { config = config(api) .. ("data = %q\n"):format(a.data),
        handlers = { ["all.lua"] = handler }, env = { CF_API_TOKEN = TOKEN, OUT = dir .. "/calls.jsonl" } }
      runs(a, 2)
      runs(b, 2)
      api:status("b.poll.example", "pending_issuance")
      runs(a, 3)
      runs(b, 3)
      local got = calls { dir = dir }
      assert.are.equal(1, #got, cjson.encode(got))
      assert.are.equal("certificate.validation.succeeded", got[1].type)
      assert.is_true(got[1].reconciled)
      local elsewhere = 0
      for _, srv in ipairs { a, b } do
        local text = http.get(srv.admin, "/metrics").body
        elsewhere = elsewhere + tonumber(text:match('certhook_poller_runs_total{poller="cf",result="elsewhere"} (%d+)') or "0")
      end
      assert.truthy(elsewhere > 0, "no run was left to the other server")
      local pages = {} -- runs never overlap: page 2 always right after a page 1
      for _, r in ipairs(api:requests()) do pages[#pages + 1] = r.query.page end
      assert.truthy(not table.concat(pages):find("11", 1, true) and not table.concat(pages):find("22", 1, true),
        table.concat(pages))
      a:cleanup()
      b:cleanup()
      api:stop()
      fs.rm(dir)
    end)
  end)
end
