-- /metrics after a known sequence of events (exact counter values), the certificate inventory
-- (expiry, status, deletion, the hostname cap, kept across a restart), promtool's lint of the
-- exposition, the Prometheus alert rules and the systemd unit in examples/, and text logs.
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local SECRET = "metrics-secret-01"
local CF = { ["cf-webhook-auth"] = SECRET }
local SOURCES = ('sources = { cloudflare = { provider = "cloudflare", secret = %q } }\n'):format(SECRET)

-- A Cloudflare SSL for SaaS event of that kind with a fresh id (and hostname, when given).
local function event(kind, hostname)
  return (events.cloudflare(kind, { hostname = hostname }))
end

-- The exposition as { ['name{k="v",...}'] = value }, labels sorted by name.
local function parse(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name, labels, value = line:match("^([%w_:]+)(%b{}) (%S+)$")
      if not name then
        name, value = line:match("^([%w_:]+) (%S+)$")
        labels = "{}"
      end
      local ls = {}
      for k, v in labels:gmatch('([%w_]+)="(.-)"') do ls[#ls + 1] = k .. '="' .. v .. '"' end
      table.sort(ls)
      out[name .. "{" .. table.concat(ls, ",") .. "}"] = tonumber(value) or value
    end
  end
  return out
end

local function key(name, labels)
  local ls = {}
  for k, v in pairs(labels or {}) do ls[#ls + 1] = k .. '="' .. v .. '"' end
  table.sort(ls)
  return name .. "{" .. table.concat(ls, ",") .. "}"
end

local function scrape(srv)
  local r = http.get(srv.admin, "/metrics")
  assert.are.equal(200, r.status)
  assert.truthy(r.headers["content-type"]:match("^text/plain; version=0%.0%.4"))
  return parse(r.body), r.body
end

-- The metrics once ready(m) is true of them (the inventory's are set by its fold, off the path
-- to the 202), or as they are after 5 s.
local function scrape_when(srv, ready)
  local m, text
  fs.wait_for(function() m, text = scrape(srv); return ready(m) end, 5)
  return m, text
end

local function promtool(args, input)
  local dir = fs.tmpdir()
  local cmd = "unset LD_PRELOAD; promtool " .. args
  if input then
    fs.write(dir .. "/in", input)
    cmd = cmd .. " < '" .. dir .. "/in'"
  end
  local out, err, code = fs.run(cmd)
  fs.rm(dir)
  return code, out .. err
end

describe("/metrics", function()
  local srv, sink
  setup(function()
    sink = Sink.start()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 2, backoff = 0.05, max_backoff = 0.05 }\n" ..
        "limits = { max_body = 4096 }\n",
      handlers = {
        ["ok.lua"] = ([[
          local http = require("certhook").http
          return { ["certificate.*"] = function(e)
            assert(http.post(%q, "{}", { headers = { ["Content-Type"] = "application/json" } }))
            http.get("http://127.0.0.1:1/") -- refused: counted, not raised
          end }]]):format(sink.url .. "/x"),
        ["fail.lua"] = 'return { ["certificate.validation.failed"] = function() error("always") end }',
      },
    }
  end)
  teardown(function()
    srv:cleanup()
    sink:stop()
  end)

  it("counts a known sequence exactly, and passes promtool's lint", function()
    local dcv = event("validation.failed")
    assert.are.equal(202, srv:post("/hooks/cloudflare", dcv, CF).status)
    assert.are.equal(200, srv:post("/hooks/cloudflare", dcv, CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", event("issuance.succeeded"), CF).status)
    assert.are.equal(401, srv:post("/hooks/cloudflare", dcv, { ["cf-webhook-auth"] = "wrong-secret-1" }).status)
    assert.are.equal(400, srv:post("/hooks/cloudflare", "{oops", CF).status)
    assert.are.equal(413, srv:post("/hooks/cloudflare", ("x"):rep(5000), CF).status)
    assert.are.equal(404, http.get(srv.port, "/elsewhere").status)
    assert.are.equal(405, http.get(srv.port, "/hooks/cloudflare").status)
    -- 2 x ok.lua success; fail.lua: failure, then dead. The counters move when a delivery ends,
    -- the journal gauges once the writer has committed its state a moment later: wait for both.
    assert(fs.wait_for(function()
      local m = scrape(srv)
      return m[key("certhook_deliveries_total", { handler = "fail.lua:certificate.validation.failed", outcome = "dead" })] == 1
        and m[key("certhook_deliveries_total", { handler = "ok.lua:certificate.*", outcome = "success" })] == 2
        and m[key("certhook_journal_deliveries", { status = "dead" })] == 1
        and m[key("certhook_journal_deliveries", { status = "done" })] == 2
    end, 10))
    local m, text = scrape(srv)
    local function events(source, type, code) -- the provider label: the source's provider
      return m[key("certhook_events_received_total", { source = source,
        provider = source == "" and "" or "cloudflare", type = type, code = code })]
    end
    assert.are.equal(1, events("cloudflare", "certificate.validation.failed", "202"))
    assert.are.equal(1, events("cloudflare", "certificate.validation.failed", "200"))
    assert.are.equal(1, events("cloudflare", "certificate.issuance.succeeded", "202"))
    assert.are.equal(1, events("cloudflare", "", "401"))
    assert.are.equal(1, events("cloudflare", "", "400"))
    assert.are.equal(1, events("cloudflare", "", "413"))
    assert.are.equal(1, events("", "", "404"))
    assert.are.equal(1, events("cloudflare", "", "405"))
    assert.are.equal(2, m[key("certhook_intake_duration_seconds_count", { code = "202" })])
    assert.are.equal(2, m[key("certhook_intake_duration_seconds_bucket", { code = "202", le = "+Inf" })])
    local fail = "fail.lua:certificate.validation.failed"
    assert.are.equal(1, m[key("certhook_deliveries_total", { handler = fail, outcome = "failure" })])
    assert.are.equal(1, m[key("certhook_deliveries_total", { handler = fail, outcome = "dead" })])
    assert.are.equal(2, m[key("certhook_handler_duration_seconds_count", { handler = fail })])
    assert.are.equal(2, m[key("certhook_handler_duration_seconds_count", { handler = "ok.lua:certificate.*" })])
    assert.are.equal(2, m[key("certhook_http_requests_total", { outcome = "2xx" })])
    assert.are.equal(2, m[key("certhook_http_requests_total", { outcome = "connrefused" })])
    assert.are.equal(1, m[key("certhook_journal_deliveries", { status = "dead" })])
    assert.are.equal(2, m[key("certhook_journal_deliveries", { status = "done" })])
    assert.are.equal(0, m[key("certhook_journal_deliveries", { status = "retrying" })])
    assert.are.equal(0, m[key("certhook_queue_depth", { queue = "dispatch" })])
    assert.are.equal(1, m["certhook_handler_generation{}"])
    assert.are.equal(2, m["certhook_handlers{}"])
    assert.are.equal(0, m["certhook_reloads_total{}"])
    assert.is_true(m["process_resident_memory_bytes{}"] > 1e6)
    assert.is_true(m["process_open_fds{}"] > 3)
    assert.is_true(m["certhook_uptime_seconds{}"] >= 0)
    assert.is_true(math.abs(m["process_start_time_seconds{}"] - os.time()) < 120)
    local code, out = promtool("check metrics", text)
    assert.are.equal(0, code, out)
  end)

  it("counts reloads and reload failures with the generation", function()
    fs.write(srv.dir .. "/handlers/broken.lua", "return {")
    assert.are.equal(422, http.request(srv.admin, "POST", "/reload").status)
    os.remove(srv.dir .. "/handlers/broken.lua")
    assert.are.equal(200, http.request(srv.admin, "POST", "/reload").status)
    local m = scrape(srv)
    assert.is_true(m["certhook_reload_failures_total{}"] >= 1)
    assert.is_true(m["certhook_reloads_total{}"] >= 1)
    assert.are.equal(1, m["certhook_last_reload_success{}"])
    assert.is_true(m["certhook_handler_generation{}"] >= 2)
  end)
end)

-- The Grafana dashboard (examples/grafana/certhook.json): classic JSON for Grafana 10+, a
-- datasource variable; every panel query is PromQL that promtool parses (Grafana's own
-- variables set as Grafana would), and every certhook_* metric it names is one a running server
-- exports, with the labels the query uses.
describe("the Grafana dashboard", function()
  it("has panels whose queries promtool parses, naming only metrics and labels certhook exports", function()
    local cjson = require "cjson"
    local d = cjson.decode(fs.read("examples/grafana/certhook.json"))
    assert.are.equal(39, d.schemaVersion)
    local vars = {}
    for _, v in ipairs(d.templating.list) do vars[v.name] = v end
    assert.are.equal("datasource", vars.datasource.type)
    assert.are.equal("prometheus", vars.datasource.query)
    local exprs, titles = {}, {}
    for _, p in ipairs(d.panels) do
      titles[p.title] = true
      if p.type ~= "row" then
        assert.are.equal("${datasource}", p.datasource.uid, p.title)
        assert.truthy(#p.targets > 0, p.title)
        for _, t in ipairs(p.targets) do
          assert.are.equal("${datasource}", t.datasource.uid, p.title)
          exprs[#exprs + 1] = t.expr
        end
      end
    end
    for _, t in ipairs { "Webhooks by provider and reply", "202 latency", "Journal commit latency", "Backlog",
                         "Deliveries by status", "Retries and dead letters", "Handler duration",
                         "Certificates, soonest expiry first", "Expiring within 7 days", "Expired" } do
      assert.truthy(titles[t], t)
    end
    -- promtool parses each query: as recording rules, with Grafana's variables substituted
    local rules = { "groups:", "  - name: dashboard", "    rules:" }
    for i, e in ipairs(exprs) do
      local promql = e:gsub("%$__rate_interval", "5m"):gsub("%$job", ".*")
      assert.falsy(promql:find("$", 1, true), "a variable left in: " .. promql)
      rules[#rules + 1] = ("      - record: dashboard_query_%d\n        expr: '%s'"):format(i, (promql:gsub("'", "''")))
    end
    local t = fs.tmpdir()
    fs.write(t .. "/dashboard.rules.yml", table.concat(rules, "\n") .. "\n")
    local code, out = promtool(("check rules '%s/dashboard.rules.yml'"):format(t))
    fs.rm(t)
    assert.are.equal(0, code, out)
    -- each metric a query names is exported (this server has had every kind of event by now),
    -- and each label it groups or matches by is one of that metric's labels
    local srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1 }\nwatchdog = false\n",
      handlers = { ["fail.lua"] = 'return { ["certificate.validation.failed"] = function() error("no") end }' },
    }
    assert.are.equal(202, srv:post("/hooks/cloudflare", event("renewal.upcoming_certificate_expiration_notification", "d.example"), CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", event("validation.failed", "e.example"), CF).status)
    local text
    assert(fs.wait_for(function()
      local m
      m, text = scrape(srv)
      return m[key("certhook_journal_deliveries", { status = "dead" })] == 1
    end, 10))
    srv:cleanup()
    local labels = {}
    for line in text:gmatch("[^\n]+") do
      local name, ls = line:match("^(certhook_[%w_]+)(%b{})")
      if not name then name, ls = line:match("^(certhook_[%w_]+)()%s"), "" end
      if name then
        labels[name] = labels[name] or {}
        for k in ls:gmatch("([%w_]+)=") do labels[name][k] = true end
      end
    end
    local named = 0
    for _, e in ipairs(exprs) do
      for name, sel in e:gmatch("(certhook_[%w_]+)(%b{})") do
        named = named + 1
        assert.truthy(labels[name], name .. " is not exported")
        for k in sel:gmatch("([%w_]+)%s*[=!~]") do
          assert.truthy(k == "job" or labels[name][k], name .. " has no label " .. k)
        end
      end
      for by in e:gmatch("by %(([^)]*)%)") do
        local name = e:match("(certhook_[%w_]+)")
        for k in by:gmatch("[%w_]+") do
          assert.truthy(k == "le" or labels[name][k], name .. " has no label " .. k .. " (by)")
        end
      end
    end
    assert.truthy(named >= #exprs)
  end)
end)

describe("the certificate inventory", function()
  it("exports expiry and status per certificate, leaves out past the cap, forgets deleted ones, survives a restart", function()
    -- (no watchdog: the fixtures' expiries are long past, it would say so meanwhile)
    local srv = Server.start { config = SOURCES .. "metrics = { max_certificates = 2 }\nwatchdog = false\n" }
    local upcoming = "renewal.upcoming_certificate_expiration_notification"
    assert.are.equal(202, srv:post("/hooks/cloudflare", event(upcoming, "a.example"), CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", event("validation.failed", "b.example"), CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", event(upcoming, "c.example"), CF).status) -- past the cap
    local m, text = scrape_when(srv, function(x) return x["certhook_certificates_left_out_total{}"] == 1 end)
    assert.are.equal(1669032000, m[key("certhook_certificate_expiry_timestamp_seconds", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare" })])
    assert.are.equal(1, m[key("certhook_certificate_status", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare", status = "active",
      state = "active", type = "certificate.expiration.upcoming" })])
    assert.are.equal(1, m[key("certhook_certificate_status", { certificate = "cloudflare:cert-b.example", hostname = "b.example", provider = "cloudflare", status = "pending_validation",
      state = "pending_validation", type = "certificate.validation.failed" })])
    assert.is_nil(m[key("certhook_certificate_expiry_timestamp_seconds", { certificate = "cloudflare:cert-c.example", hostname = "c.example", provider = "cloudflare" })])
    assert.are.equal(2, m["certhook_certificates{}"])
    assert.are.equal(1, m["certhook_certificates_left_out_total{}"])
    assert.is_true(math.abs(m[key("certhook_certificate_last_event_timestamp_seconds", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare" })] - os.time()) < 60)
    assert.are.equal(0, (promtool("check metrics", text)))
    -- a later event without an expiry keeps the known one; a deletion removes the hostname
    assert.are.equal(202, srv:post("/hooks/cloudflare", event("deployment.succeeded", "a.example"), CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", event("deletion.succeeded", "b.example"), CF).status)
    m = scrape_when(srv, function(x) return x["certhook_certificates{}"] == 1 end)
    assert.are.equal(1669032000, m[key("certhook_certificate_expiry_timestamp_seconds", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare" })])
    assert.are.equal(1, m[key("certhook_certificate_status", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare", status = "active",
      state = "active", type = "certificate.deployment.succeeded" })])
    assert.are.equal(1, m["certhook_certificates{}"])
    assert.is_nil(m[key("certhook_certificate_last_event_timestamp_seconds", { certificate = "cloudflare:cert-b.example", hostname = "b.example", provider = "cloudflare" })])
    -- kept in the journal: after a restart the newest certificates within the cap have series
    -- (c.example, left out while the cap was full, is in the inventory and now has room)
    assert.are.equal(0, srv:stop())
    srv:launch()
    m = scrape(srv)
    assert.are.equal(1669032000, m[key("certhook_certificate_expiry_timestamp_seconds", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare" })])
    assert.are.equal(1669032000, m[key("certhook_certificate_expiry_timestamp_seconds", { certificate = "cloudflare:cert-c.example", hostname = "c.example", provider = "cloudflare" })])
    assert.are.equal(1, m[key("certhook_certificate_status", { certificate = "cloudflare:cert-a.example", hostname = "a.example", provider = "cloudflare", status = "active",
      state = "active", type = "certificate.deployment.succeeded" })])
    assert.are.equal(2, m["certhook_certificates{}"])
    srv:cleanup()
  end)
end)

describe("operations files", function()
  it("ships alert rules promtool accepts, with the alerts the README names", function()
    local code, out = promtool("check rules examples/prometheus/certhook.rules.yml")
    assert.are.equal(0, code, out)
    local rules = fs.read("examples/prometheus/certhook.rules.yml")
    for _, alert in ipairs { "CerthookDeadDeliveries", "CerthookReloadFailed", "CerthookCertificateExpiringSoon",
                             "CerthookDown", "CerthookNotReady", "CerthookRenewalOverdue" } do
      assert.truthy(rules:find("alert: " .. alert, 1, true), alert)
    end
    local t = fs.tmpdir()
    fs.write(t .. "/test.yml", fs.read("tests/e2e/certhook.rules.test.yml"))
    os.execute(("cp examples/prometheus/certhook.rules.yml '%s/'"):format(t))
    code, out = promtool(("test rules '%s/test.yml'"):format(t))
    assert.are.equal(0, code, out)
    fs.rm(t)
  end)

  it("ships a systemd unit that systemd-analyze verify accepts", function()
    -- verify insists that ExecStart's program exists: point it at this tree's certhook
    local t = fs.tmpdir()
    local unit = fs.read("examples/systemd/certhook.service")
    assert.truthy(unit:match("Type=notify"))
    assert.truthy(unit:match("ExecReload=/bin/kill %-HUP %$MAINPID"))
    fs.write(t .. "/certhook.service", (unit:gsub("/usr/local/bin/certhook", Server.certhook)))
    local out, err, code = fs.run(("unset LD_PRELOAD; systemd-analyze verify '%s/certhook.service'"):format(t))
    assert.are.equal(0, code, out .. err)
    fs.rm(t)
  end)
end)

describe("log.format", function()
  it("writes text lines for people when asked", function()
    local srv = Server.start { config = SOURCES .. 'log = { format = "text" }\n' }
    assert.are.equal(401, srv:post("/hooks/cloudflare", "{}", { ["cf-webhook-auth"] = "wrong-secret-2" }).status)
    local log = srv:log_text()
    assert.truthy(log:match("\n?%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z INFO  listening listen=127%.0%.0%.1:%d+"), log)
    assert.truthy(log:match('INFO  request rejected status=401 source=cloudflare reason="missing or wrong cf%-webhook%-auth header"'), log)
    assert.falsy(log:match("{\"time\""), log)
    srv:cleanup()
  end)
end)
